//! berth-bridge: containers on a Linux bridge through veth pairs, with the
//! reference `bridge` plugin's config keys and meaning. The front end of
//! the network core's bridge attachment
//! ([`berth_network::attachment::BridgeNetwork`]): the request's config
//! becomes the core's network, and the config's IPAM plugin gives the
//! addresses.

pub mod config;

use cni::{CniResult, Command, Error, Plugin, Request};
use config::BridgeConf;
use ifconf::attach::{self, IpamPlugin};

pub struct BridgePlugin;

impl BridgeConf {
    /// The IPAM plugin the config names, if any.
    fn ipam<'a>(&'a self, req: &'a Request) -> Option<IpamPlugin<'a>> {
        self.ipam_type.as_deref().map(|t| IpamPlugin::new(t, req))
    }
}

impl Plugin for BridgePlugin {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        let conf = BridgeConf::parse(req)?;
        let mut ipam = conf.ipam(req);
        let mut result = attach::add(req, &conf.network, conf.mac, ipam.as_mut())?;
        result.dns = if conf.dns.is_empty() {
            ipam.map(|i| i.dns).unwrap_or_default()
        } else {
            conf.dns.clone()
        };
        Ok(result)
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        let conf = BridgeConf::parse(req)?;
        attach::del(req, &conf.network, conf.ipam(req).as_mut())
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        let conf = BridgeConf::parse(req)?;
        let prev = attach::prev_result(req)?;
        if let Some(ipam) = conf.ipam(req) {
            ipam.call(Command::Check)?;
        }
        attach::check(req, &conf.network, &prev)
    }

    fn status(&self, req: &Request) -> Result<(), Error> {
        let conf = BridgeConf::parse(req)?;
        match conf.ipam(req) {
            Some(ipam) => ipam.call(Command::Status),
            None => Ok(()),
        }
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        let conf = BridgeConf::parse(req)?;
        attach::gc(req, &conf.network, conf.ipam(req).as_mut())
    }

    fn about(&self) -> String {
        format!(
            "berth-bridge {}: containers on a Linux bridge (CNI 0.1.0 - 1.1.0)",
            env!("CARGO_PKG_VERSION")
        )
    }
}
