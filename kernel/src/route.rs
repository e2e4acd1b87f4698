//! Unicast routes (IPv4 and IPv6), in any table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{Error, Handle, Result};

const RT_TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;

/// A unicast route.
///
/// Fields left `None` take the kernel's (or ip(8)'s) default when adding:
/// `table` None is the main table; `scope` None is "link" for an IPv4
/// route without gateway and "universe" otherwise. Routes read back with
/// [`Handle::routes`] use the same convention (main table and default scope
/// come back as None), so a route added from a `Route` compares equal to
/// the one read back, except that the kernel always reports a `priority`
/// for IPv6 routes (1024 when none was given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: Option<u32>,
    /// The route metric.
    pub priority: Option<u32>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    /// RT_SCOPE_*: 0 universe, 253 link, 254 host.
    pub scope: Option<u8>,
    /// Use the gateway even if it is not on a connected subnet of `oif`.
    pub onlink: bool,
    /// Read back only: the kernel made it (RTPROT_KERNEL), as it does for
    /// an address's prefix and for IPv6 link-local; it comes back by itself
    /// with the address or link. Ignored when adding.
    pub kernel_made: bool,
}

impl Route {
    /// A route to `dst` with everything else unset.
    pub fn new(dst: IpNet) -> Route {
        Route {
            dst,
            gateway: None,
            oif: None,
            table: None,
            priority: None,
            mtu: None,
            advmss: None,
            scope: None,
            onlink: false,
            kernel_made: false,
        }
    }

    /// The default route of `gw`'s family, via `gw`.
    pub fn default_via(gw: IpAddr) -> Route {
        let dst = match gw {
            IpAddr::V4(_) => IpNet::V4(ipnet::Ipv4Net::default()),
            IpAddr::V6(_) => IpNet::V6(ipnet::Ipv6Net::default()),
        };
        Route::new(dst).via(gw)
    }

    pub fn via(mut self, gw: IpAddr) -> Route {
        self.gateway = Some(gw);
        self
    }

    pub fn dev(mut self, oif: u32) -> Route {
        self.oif = Some(oif);
        self
    }

    fn default_scope(&self) -> u8 {
        if self.dst.addr().is_ipv4() && self.gateway.is_none() {
            RT_SCOPE_LINK
        } else {
            RT_SCOPE_UNIVERSE
        }
    }

    /// "10.0.0.0/8 via 10.1.0.1 dev 3 table 100", for error messages.
    fn describe(&self) -> String {
        use std::fmt::Write;
        let mut s = self.dst.trunc().to_string();
        // Writing to a String cannot fail.
        if let Some(gw) = self.gateway {
            let _ = write!(s, " via {gw}");
        }
        if let Some(oif) = self.oif {
            let _ = write!(s, " dev {oif}");
        }
        if let Some(t) = self.table {
            let _ = write!(s, " table {t}");
        }
        if let Some(p) = self.priority {
            let _ = write!(s, " metric {p}");
        }
        s
    }

    fn check(&self) -> Result<()> {
        if let Some(gw) = self.gateway {
            if gw.is_ipv4() != self.dst.addr().is_ipv4() {
                return Err(Error::invalid(
                    "route",
                    self.describe(),
                    "gateway and destination are of different families",
                ));
            }
        }
        Ok(())
    }

    /// The request for this route. Deletion leaves protocol, type and
    /// scope as wildcards (like ip(8)), so it matches however the route
    /// was created.
    fn to_message(&self, delete: bool) -> RouteMessage {
        let mut msg = RouteMessage::default();
        let h = &mut msg.header;
        h.address_family = if self.dst.addr().is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        h.destination_prefix_length = self.dst.prefix_len();
        let table = self.table.unwrap_or(RT_TABLE_MAIN);
        // Table ids above 255 only fit in RTA_TABLE, which is always sent.
        h.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        if delete {
            h.protocol = RouteProtocol::Unspec;
            h.kind = RouteType::Unspec;
            h.scope = self
                .scope
                .map(RouteScope::from)
                .unwrap_or(RouteScope::NoWhere);
        } else {
            h.protocol = RouteProtocol::Boot;
            h.kind = RouteType::Unicast;
            h.scope = RouteScope::from(self.scope.unwrap_or_else(|| self.default_scope()));
            if self.onlink {
                h.flags = RouteFlags::Onlink;
            }
        }
        let attrs = &mut msg.attributes;
        attrs.push(RouteAttribute::Table(table));
        if self.dst.prefix_len() > 0 {
            attrs.push(RouteAttribute::Destination(RouteAddress::from(
                self.dst.trunc().addr(),
            )));
        }
        if let Some(gw) = self.gateway {
            attrs.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(oif) = self.oif {
            attrs.push(RouteAttribute::Oif(oif));
        }
        if let Some(p) = self.priority {
            attrs.push(RouteAttribute::Priority(p));
        }
        if !delete {
            let mut metrics = Vec::new();
            if let Some(mtu) = self.mtu {
                metrics.push(RouteMetric::Mtu(mtu));
            }
            if let Some(advmss) = self.advmss {
                metrics.push(RouteMetric::Advmss(advmss));
            }
            if !metrics.is_empty() {
                attrs.push(RouteAttribute::Metrics(metrics));
            }
        }
        msg
    }

    /// Converts a dumped route; None for anything but IPv4/IPv6 unicast.
    fn from_message(m: &RouteMessage) -> Option<Route> {
        if m.header.kind != RouteType::Unicast {
            return None;
        }
        let unspecified = match m.header.address_family {
            AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => return None,
        };
        let mut dst = unspecified;
        let mut route = Route::new(IpNet::new(unspecified, 0).ok()?);
        let mut table = u32::from(m.header.table);
        for attr in &m.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst = ip_of(a)?,
                RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::Priority(p) => route.priority = Some(*p),
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Metrics(ms) => {
                    for metric in ms {
                        match metric {
                            RouteMetric::Mtu(v) => route.mtu = Some(*v),
                            RouteMetric::Advmss(v) => route.advmss = Some(*v),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        route.dst = IpNet::new(dst, m.header.destination_prefix_length).ok()?;
        route.table = (table != RT_TABLE_MAIN).then_some(table);
        let scope = u8::from(m.header.scope);
        route.scope = (scope != route.default_scope()).then_some(scope);
        route.onlink = m.header.flags.contains(RouteFlags::Onlink);
        route.kernel_made = m.header.protocol == RouteProtocol::Kernel;
        Some(route)
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

impl Handle {
    /// All IPv4 and IPv6 unicast routes, from every table.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let replies = self
            .sock
            .dump(RouteNetlinkMessage::GetRoute(RouteMessage::default()))
            .map_err(|e| e.context("list routes"))?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(m) => Route::from_message(m),
                _ => None,
            })
            .collect())
    }

    /// The route the kernel would use to reach `dst` (RTM_GETROUTE, as
    /// `ip route get`), or None when the answer is not a unicast route
    /// (a local or unreachable destination). Its `dst` is `dst` itself.
    pub fn route_get(&mut self, dst: IpAddr) -> Result<Option<Route>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = match dst {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        match self.sock.get(RouteNetlinkMessage::GetRoute(msg)) {
            Ok(RouteNetlinkMessage::NewRoute(m)) => Ok(Route::from_message(&m)),
            Ok(_) => Ok(None),
            // No route at all (ENETUNREACH, EHOSTUNREACH...).
            Err(crate::nl::NlError::Kernel { errno, .. })
                if errno == libc::ENETUNREACH || errno == libc::EHOSTUNREACH =>
            {
                Ok(None)
            }
            Err(e) => Err(e.context(format!("get route to {dst}"))),
        }
    }

    /// Adds a route; fails with errno EEXIST if the same route exists.
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        self.route_request(route, NLM_F_CREATE | NLM_F_EXCL, "add")
    }

    /// Adds a route or replaces the existing one with the same key.
    pub fn replace_route(&mut self, route: &Route) -> Result<()> {
        self.route_request(route, NLM_F_CREATE | NLM_F_REPLACE, "replace")
    }

    /// Deletes a route (errno ESRCH if there is no such route).
    pub fn del_route(&mut self, route: &Route) -> Result<()> {
        route.check()?;
        self.sock
            .request(RouteNetlinkMessage::DelRoute(route.to_message(true)), 0)
            .map_err(|e| e.context(format!("delete route {}", route.describe())))
    }

    fn route_request(&mut self, route: &Route, flags: u16, verb: &str) -> Result<()> {
        route.check()?;
        self.sock
            .request(
                RouteNetlinkMessage::NewRoute(route.to_message(false)),
                flags,
            )
            .map_err(|e| e.context(format!("{verb} route {}", route.describe())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn round_trip_through_message() {
        let mut r = Route::new(net("10.9.0.0/16"))
            .via("10.1.0.1".parse().unwrap())
            .dev(7);
        r.priority = Some(50);
        r.mtu = Some(1400);
        r.table = Some(1000);
        let mut m = r.to_message(false);
        // what the kernel would report: the type stays unicast
        m.header.kind = RouteType::Unicast;
        assert_eq!(Route::from_message(&m), Some(r));
    }

    #[test]
    fn defaults_normalise_to_none() {
        let r = Route::new(net("10.9.0.0/16")).dev(3);
        let m = r.to_message(false);
        assert_eq!(u8::from(m.header.scope), RT_SCOPE_LINK);
        assert_eq!(m.header.table, 254);
        let back = Route::from_message(&m).unwrap();
        assert_eq!(back.scope, None);
        assert_eq!(back.table, None);
    }

    #[test]
    fn default_route_has_no_destination_attr() {
        let r = Route::default_via("fd00::1".parse().unwrap());
        assert_eq!(r.dst, net("::/0"));
        let m = r.to_message(false);
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
        assert_eq!(Route::from_message(&m).unwrap(), r);
    }

    #[test]
    fn delete_uses_wildcards() {
        let m = Route::new(net("10.0.0.0/8")).to_message(true);
        assert_eq!(m.header.scope, RouteScope::NoWhere);
        assert_eq!(m.header.protocol, RouteProtocol::Unspec);
    }

    #[test]
    fn mixed_families_rejected() {
        let r = Route::new(net("10.0.0.0/8")).via("fd00::1".parse().unwrap());
        assert!(r.check().is_err());
    }

    #[test]
    fn non_unicast_skipped() {
        let mut m = Route::new(net("10.0.0.0/8")).to_message(false);
        m.header.kind = RouteType::Local;
        assert!(Route::from_message(&m).is_none());
    }
}
