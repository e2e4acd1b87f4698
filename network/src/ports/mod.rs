//! Published ports: host ports DNATed to a container's address, on
//! nftables maps in `inet berth` (firewall/portmap.rs), for
//! berth-portmap (`runtimeConfig.portMappings`) and berthd (Docker's
//! `-p`) alike: both claim host ports in one store, so a port is never
//! published twice.
//!
//! Everything happens in the host's namespace; a container's is never
//! entered, so unpublishing works without it. Per publish: one SQLite
//! transaction that checks and claims the host ports (a port another
//! attachment holds is refused, naming the holder) and records what will
//! be installed, then one nft transaction adding exactly those elements
//! (the shared chains and sets are built only when the store's note says
//! they are missing, see `install`). Unpublishing removes what the record
//! says, so it needs neither the mappings again nor a listing of the
//! ruleset. Both run under berth's host-wide lock, which bridge networks
//! also take around their table changes.
//!
//! Order for crash safety: the record is written before the kernel
//! changes, and forgotten only after they are undone, so a process killed
//! at any point leaves a record that unpublishing or GC acts on (removing
//! an element that was never added is fine).

pub mod proxy;

use std::net::IpAddr;
use std::path::PathBuf;

use crate::firewall::{self, Conditions, PortMapping, Protocol, PublishedPorts};
use berth_kernel::nf_tables::Batch;
use serde::{Deserialize, Serialize};
use store::host::boot_id;
use store::ports::{PortClaim, PortOwner, PortStore, Published};

use crate::{kernel, Error, Kind};

/// Reported, not returned: the mapping works for every new flow anyway.
fn warn_stale_flows(e: &berth_kernel::Error) {
    tracing::warn!("forgetting stale UDP flows: {e}");
}

pub const DEFAULT_RUN_DIR: &str = "/run/berth/portmap";

/// berth's host-wide lock (shared with berth-bridge: both change the
/// `inet berth` table).
const DB_FILE: &str = "ports.db";

/// The run dir (BERTH_RUN_DIR overrides it; tests use private ones).
fn run_dir() -> PathBuf {
    std::env::var_os("BERTH_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_RUN_DIR.into())
}

fn open_store() -> Result<PortStore, Error> {
    let dir = run_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::new(Kind::Io, format!("creating {}: {e}", dir.display())))?;
    PortStore::open(&dir.join(DB_FILE), &boot_id()).map_err(Error::store)
}

/// berth's host-wide lock, held until the value is dropped.
fn lock() -> Result<nix::fcntl::Flock<std::fs::File>, Error> {
    store::host::lock().map_err(|e| Error::new(Kind::Io, e.to_string()))
}

/// What an attachment installed, as recorded in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Installed {
    #[serde(default, rename = "conditionsV4")]
    conditions_v4: Vec<String>,
    #[serde(default, rename = "conditionsV6")]
    conditions_v6: Vec<String>,
    mappings: Vec<InstalledMapping>,
    #[serde(rename = "containerIPs")]
    container_ips: Vec<IpAddr>,
    hairpin: Vec<(IpAddr, String)>,
    localhost: Vec<IpAddr>,
    masq_all: Vec<IpAddr>,
    /// The `::1` ports relayed by proxies (see `proxy`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    loopback6: Vec<proxy::Proxy>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstalledMapping {
    protocol: String,
    #[serde(rename = "hostIP")]
    host_ip: Option<IpAddr>,
    host_port: u16,
    #[serde(rename = "containerIP")]
    container_ip: IpAddr,
    container_port: u16,
}

impl Installed {
    fn of(p: &PublishedPorts) -> Installed {
        Installed {
            conditions_v4: p.conditions.v4.clone(),
            conditions_v6: p.conditions.v6.clone(),
            mappings: p
                .mappings
                .iter()
                .map(|m| InstalledMapping {
                    protocol: m.protocol.name().to_string(),
                    host_ip: m.host_ip,
                    host_port: m.host_port,
                    container_ip: m.container_ip,
                    container_port: m.container_port,
                })
                .collect(),
            container_ips: p.container_ips.clone(),
            hairpin: p.hairpin.clone(),
            localhost: p.localhost.clone(),
            masq_all: p.masq_all.clone(),
            loopback6: Vec::new(),
        }
    }

    fn ports(&self) -> Result<PublishedPorts, Error> {
        let mut mappings = Vec::with_capacity(self.mappings.len());
        for m in &self.mappings {
            let protocol = Protocol::parse(&m.protocol).ok_or_else(|| {
                Error::new(
                    Kind::Store,
                    format!("recorded mapping has protocol {:?}", m.protocol),
                )
            })?;
            mappings.push(PortMapping {
                protocol,
                host_ip: m.host_ip,
                host_port: m.host_port,
                container_ip: m.container_ip,
                container_port: m.container_port,
            });
        }
        Ok(PublishedPorts {
            conditions: self.conditions(),
            mappings,
            container_ips: self.container_ips.clone(),
            hairpin: self.hairpin.clone(),
            localhost: self.localhost.clone(),
            masq_all: self.masq_all.clone(),
        })
    }

    fn conditions(&self) -> Conditions {
        Conditions {
            v4: self.conditions_v4.clone(),
            v6: self.conditions_v6.clone(),
        }
    }

    fn parse(p: &Published) -> Result<Installed, Error> {
        Installed::from_text(&p.installed, &p.owner.to_string())
    }

    fn from_text(text: &str, whose: &str) -> Result<Installed, Error> {
        serde_json::from_str(text)
            .map_err(|e| Error::new(Kind::Store, format!("record of {whose} is unreadable: {e}")))
    }
}

/// Connections from 127.0.0.1, DNATed to the container, leave through its
/// host-side link with a loopback source until masquerade rewrites it; the
/// kernel routes that only with route_localnet on that link. Set on the
/// container's link only, never reverted (other containers share it), as
/// the reference portmap does.
fn allow_localnet(ports: &PublishedPorts) -> Result<(), Error> {
    for key in localnet_keys(ports) {
        berth_kernel::sysctl::write(&key, "1").map_err(kernel)?;
    }
    Ok(())
}

/// The route_localnet sysctls `ports` needs set.
fn localnet_keys(ports: &PublishedPorts) -> impl Iterator<Item = String> + '_ {
    ports
        .hairpin
        .iter()
        .filter(|(ip, _)| ip.is_ipv4() && ports.localhost.contains(ip))
        .map(|(_, link)| format!("net/ipv4/conf/{link}/route_localnet"))
}

/// The reconciler's part for route_localnet: sets it again where someone
/// turned it off on a link that `all`'s 127.0.0.1 ports need it on
/// (sysctl changes raise no ruleset event: the slow interval's pass finds
/// them). Returns the sysctls set. A link that is gone (its container
/// too) needs nothing.
pub fn repair_localnet(all: &[PublishedPorts]) -> Result<Vec<String>, Error> {
    let mut set = Vec::new();
    for key in all.iter().flat_map(localnet_keys) {
        if matches!(berth_kernel::sysctl::read(&key), Ok(v) if v != "1") {
            berth_kernel::sysctl::write(&key, "1").map_err(kernel)?;
            set.push(key.replace('/', "."));
        }
    }
    Ok(set)
}

/// A UDP client that sent to a host port before it was published has a
/// conntrack entry without NAT, which its later datagrams keep following:
/// the published port would look dead to it until the entry times out.
/// Those entries go once the mapping is in place (as the reference does).
/// Best effort: the mapping works for every new flow either way, so a
/// failure is only reported on stderr.
fn forget_stale_udp_flows(ports: &PublishedPorts) {
    for v4 in [true, false] {
        let mut udp: Vec<u16> = ports
            .mappings
            .iter()
            .filter(|m| m.protocol == Protocol::Udp && m.container_ip.is_ipv4() == v4)
            .map(|m| m.host_port)
            .collect();
        udp.sort_unstable();
        udp.dedup();
        if let Err(e) = berth_kernel::conntrack::delete_udp_to_ports(v4, &udp) {
            warn_stale_flows(&e);
        }
    }
}

/// The conditions of every profile other attachments use.
fn other_profiles(store: &PortStore, owner: &PortOwner) -> Result<Vec<Conditions>, Error> {
    store
        .profiles_except(owner)
        .map_err(Error::store)?
        .iter()
        .map(|(id, installed)| {
            Installed::from_text(installed, &format!("profile {id}")).map(|i| i.conditions())
        })
        .collect()
}

/// The version of the shared chains' layout: a store noting another (an
/// upgrade) gets them rebuilt on the next ADD.
const STRUCTURE_VERSION: &str = "2";

/// How the store notes which structure is installed: the layout version
/// and the profile IDs.
fn structure_note(profiles: &[&Conditions]) -> String {
    let mut ids: Vec<String> = profiles.iter().map(|c| c.id()).collect();
    ids.sort();
    ids.dedup();
    format!("v{STRUCTURE_VERSION}:{}", ids.join(","))
}

fn noted(store: &PortStore, note: &str) -> Result<bool, Error> {
    Ok(store.structure().map_err(Error::store)?.as_deref() == Some(note))
}

/// Puts `ports` (already claimed) into the kernel. The common case adds
/// its elements and nothing else; when the store's note says the
/// structure for these profiles is not there (first ADD, a new profile),
/// or the fast path finds it gone (a flushed ruleset), the structure is
/// rebuilt with every recorded attachment's elements, so state lost
/// behind berth's back comes back too. Called under the lock.
fn install(
    store: &mut PortStore,
    owner: &PortOwner,
    replaced: Option<&PublishedPorts>,
    ports: &PublishedPorts,
) -> Result<(), Error> {
    let others = other_profiles(store, owner)?;
    let mut profiles: Vec<&Conditions> = others.iter().collect();
    profiles.push(&ports.conditions);
    let note = structure_note(&profiles);
    if noted(store, &note)? && firewall::add_elements_in(None, replaced, ports)? {
        return Ok(());
    }
    store.set_structure(None).map_err(Error::store)?;
    let all = ports_of(&store.all_attachments().map_err(Error::store)?)?;
    let refs: Vec<&PublishedPorts> = all.iter().collect();
    firewall::rebuild_in(None, &profiles, replaced, &refs)?;
    store.set_structure(Some(&note)).map_err(Error::store)
}

/// The ports each of `records` installed.
fn ports_of(records: &[Published]) -> Result<Vec<PublishedPorts>, Error> {
    records
        .iter()
        .map(|p| Installed::parse(p).and_then(|i| i.ports()))
        .collect()
}

/// Removes what `published` installed and forgets it (DEL and GC). The
/// common case deletes its elements and nothing else; the last user of a
/// profile also drops the profile's objects, the last attachment every
/// portmap object (and the table if nothing else is left in it). Called
/// under the lock.
fn release(store: &mut PortStore, published: &Published) -> Result<(), Error> {
    let installed = Installed::parse(published)?;
    if !installed.loopback6.is_empty() {
        proxy::stop_all(&proxy::owner_key(&published.owner.to_string()));
    }
    let ports = installed.ports()?;
    let others = other_profiles(store, &published.owner)?;
    let refs: Vec<&Conditions> = others.iter().collect();
    let note = structure_note(&refs);
    let shared = refs.iter().any(|c| c.id() == ports.conditions.id());
    let mut structure_lost = false;
    if shared && noted(store, &note)? {
        if firewall::remove_elements_in(None, &ports)? {
            return store.release(&published.owner).map_err(Error::store);
        }
        structure_lost = true;
    }
    firewall::unpublish_in(None, &refs, &ports)?;
    if others.is_empty() {
        firewall::remove_table_if_empty_in(None)?;
    }
    // After a lost structure the others' elements are gone too: no note,
    // so the next ADD rebuilds everything from the records.
    let now = (!others.is_empty() && !structure_lost).then_some(note);
    store.set_structure(now.as_deref()).map_err(Error::store)?;
    store.release(&published.owner).map_err(Error::store)
}

/// Every attachment's published ports the host's store records (none, and
/// nothing created, when there is no store yet).
pub fn recorded() -> Result<Vec<PublishedPorts>, Error> {
    let db = run_dir().join(DB_FILE);
    if !db.exists() {
        return Ok(Vec::new());
    }
    // Read-only: the reconciler reads this on every pass, and must on a
    // read-only /run too.
    ports_of(&store::ports::read_attachments(&db, &boot_id()).map_err(Error::store)?)
}

/// One attachment's published ports, as the host's store records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortsOf {
    pub owner: PortOwner,
    pub mappings: Vec<PortMapping>,
    /// The netns its container lives in, when the publisher said.
    pub netns: Option<String>,
}

/// Every attachment's published ports with who publishes them, read-only
/// (the operator's view; none when there is no store yet).
pub fn published() -> Result<Vec<PortsOf>, Error> {
    let db = run_dir().join(DB_FILE);
    if !db.exists() {
        return Ok(Vec::new());
    }
    let (all, netns) =
        store::ports::read_attachments_and_netns(&db, &boot_id()).map_err(Error::store)?;
    let netns: std::collections::HashMap<PortOwner, String> = netns.into_iter().collect();
    all.iter()
        .map(|p| {
            let ports = Installed::parse(p).and_then(|i| i.ports())?;
            Ok(PortsOf {
                owner: p.owner.clone(),
                mappings: ports.mappings,
                netns: netns.get(&p.owner).cloned(),
            })
        })
        .collect()
}

/// The reconciler's part: if `listing` (of `inet berth`; None when the
/// table is gone) lacks anything of `all` ([`recorded`]), rebuilds them
/// all, as an ADD does when it finds the structure gone. Returns what was
/// missing. Called under berth's lock.
pub fn repair(
    listing: Option<&firewall::TableListing>,
    all: &[PublishedPorts],
) -> Result<Option<String>, Error> {
    let Some(what) = missing(listing, all) else {
        return Ok(None);
    };
    let rebuild = Rebuild::begin(all)?;
    rebuild
        .batch
        .commit(None, "publish ports")
        .map_err(Error::firewall)?;
    rebuild.done()?;
    Ok(Some(what))
}

/// What `listing` (of `inet berth`; None when the table is gone) lacks of
/// `all`, as text; None when nothing.
pub fn missing(listing: Option<&firewall::TableListing>, all: &[PublishedPorts]) -> Option<String> {
    if all.is_empty() {
        return None;
    }
    let refs: Vec<&PublishedPorts> = all.iter().collect();
    let profiles: Vec<&Conditions> = all.iter().map(|p| &p.conditions).collect();
    match listing {
        None => Some(format!("table inet {}", firewall::TABLE)),
        Some(l) => firewall::portmap_missing_from_listing(l, &profiles, &refs),
    }
}

/// A rebuild of every recorded attachment's ports: [`Rebuild::batch`] is
/// committed by the caller (alone, or with the rest of a repair), then
/// [`Rebuild::done`] notes it.
pub struct Rebuild {
    pub batch: Batch,
    store: Option<PortStore>,
    note: String,
}

impl Rebuild {
    /// The rebuild of `all`. The note is forgotten while the structure is
    /// rebuilt, so an ADD after a rebuild killed midway rebuilds it
    /// again. Where the store cannot be written (a read-only /run), the
    /// rebuild goes ahead without it: no ADD can run there either, and
    /// the next pass finishes what a killed one left.
    pub fn begin(all: &[PublishedPorts]) -> Result<Rebuild, Error> {
        let refs: Vec<&PublishedPorts> = all.iter().collect();
        let profiles: Vec<&Conditions> = all.iter().map(|p| &p.conditions).collect();
        let batch = firewall::rebuild_batch(&profiles, None, &refs)?;
        let store = open_store()
            .and_then(|mut st| st.set_structure(None).map_err(Error::store).map(|()| st))
            .map_err(|e| tracing::warn!("rebuilding published ports without noting it: {e}"))
            .ok();
        Ok(Rebuild {
            batch,
            store,
            note: structure_note(&profiles),
        })
    }

    /// After the batch was committed: notes the structure, so that ADDs
    /// take the fast path again.
    pub fn done(self) -> Result<(), Error> {
        if let Some(mut st) = self.store {
            st.set_structure(Some(&self.note)).map_err(Error::store)?;
        }
        Ok(())
    }
}

/// Publishes `ports` for `owner`, claiming `claims` (ADD, and berthd's
/// ProgramExternalConnectivity for Docker's `-p`: both share the host's
/// claims, so a port is never published twice): one store transaction,
/// then one nft transaction; replaces what `owner` published before.
/// `netns`: where the container lives (CNI_NETNS, Docker's SandboxKey),
/// recorded for the operator's view.
pub fn publish(
    owner: &PortOwner,
    ports: &PublishedPorts,
    claims: &[PortClaim],
    netns: Option<&str>,
) -> Result<(), Error> {
    publish_with_proxies(owner, ports, claims, &[], netns)
}

/// [`publish`], and the `::1` ports relayed by proxies (recorded before
/// they start: DEL and GC find them by the record).
pub fn publish_with_proxies(
    owner: &PortOwner,
    ports: &PublishedPorts,
    claims: &[PortClaim],
    loopback6: &[proxy::Proxy],
    netns: Option<&str>,
) -> Result<(), Error> {
    let installed = Installed {
        loopback6: loopback6.to_vec(),
        ..Installed::of(ports)
    };
    let installed = serde_json::to_string(&installed)
        .map_err(|e| Error::new(Kind::Store, format!("encoding the record: {e}")))?;
    let published = Published {
        owner: owner.clone(),
        profile: ports.conditions.id(),
        installed,
    };
    let _lock = lock()?;
    let mut store = open_store()?;
    let replaced = store
        .claim_in(&published, claims, netns)
        .map_err(Error::store)?;
    let replaced = replaced
        .map(|r| Installed::parse(&r).and_then(|i| i.ports()))
        .transpose()?;
    if let Err(e) = install(&mut store, owner, replaced.as_ref(), ports) {
        // Nothing of the failed batch was applied; what a replaced record
        // had installed goes too, so the store and kernel agree.
        if let Some(old) = &replaced {
            let others = other_profiles(&store, owner).unwrap_or_default();
            let refs: Vec<&Conditions> = others.iter().collect();
            let _ = firewall::unpublish_in(None, &refs, old);
        }
        let _ = store.release(owner);
        return Err(e);
    }
    allow_localnet(ports)?;
    forget_stale_udp_flows(ports);
    // A replaced record's proxies go; this one's start.
    let key = proxy::owner_key(&owner.to_string());
    if replaced.is_some() {
        proxy::stop_all(&key);
    }
    if let Err(e) = proxy::spawn(&key, loopback6) {
        // Nothing of this ADD stays: its proxy, elements, record.
        proxy::stop_all(&key);
        let stored = store.attachment(owner).map_err(Error::store)?;
        if let Some(published) = stored {
            release(&mut store, &published)?;
        }
        return Err(e);
    }
    Ok(())
}

/// Removes whatever `owner` published (nothing is fine).
pub fn unpublish(owner: &PortOwner) -> Result<(), Error> {
    let _lock = lock()?;
    let mut store = open_store()?;
    match store.attachment(owner).map_err(Error::store)? {
        Some(published) => release(&mut store, &published),
        None => Ok(()),
    }
}

/// CHECK of `owner`'s published ports: the record holds `wanted` (and the
/// `conditions`), its `::1` relay runs, and the kernel has the shared
/// structure and the record's elements.
pub fn check(
    owner: &PortOwner,
    wanted: &PublishedPorts,
    conditions: &Conditions,
) -> Result<(), Error> {
    let store = open_store()?;
    let published = store
        .attachment(owner)
        .map_err(Error::store)?
        .ok_or_else(|| {
            Error::check_failed(format!("no published ports are recorded for {owner}"))
        })?;
    let installed = Installed::parse(&published)?;
    let mut want = Installed::of(wanted).mappings;
    let mut have = installed.mappings.clone();
    want.sort();
    have.sort();
    if want != have || installed.conditions() != *conditions {
        return Err(Error::check_failed(format!(
            "the ports published for {owner} differ from the config's: recorded {}, configured {}",
            serde_json::to_string(&have).unwrap_or_default(),
            serde_json::to_string(&want).unwrap_or_default()
        )));
    }
    if !installed.loopback6.is_empty() && !proxy::running(&proxy::owner_key(&owner.to_string())) {
        return Err(Error::check_failed(format!(
            "the ::1 relay of {owner} is not running"
        )));
    }
    let others = other_profiles(&store, owner)?;
    let mut profiles: Vec<&Conditions> = others.iter().collect();
    profiles.push(conditions);
    if let Some(missing) = firewall::structure_missing_in(None, &profiles)? {
        return Err(Error::check_failed(missing));
    }
    match firewall::portmap_missing_in(None, &installed.ports()?)? {
        Some(missing) => Err(Error::check_failed(missing)),
        None => Ok(()),
    }
}

/// GC of `network`: unpublishes every attachment `keep` does not keep.
/// Returns the first error, after trying them all.
pub fn gc(network: &str, keep: impl Fn(&PortOwner) -> bool) -> Result<(), Error> {
    let _lock = lock()?;
    let mut store = open_store()?;
    let mut first_error = None;
    for published in store.attachments(network).map_err(Error::store)? {
        if keep(&published.owner) {
            continue;
        }
        if let Err(e) = release(&mut store, &published) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
