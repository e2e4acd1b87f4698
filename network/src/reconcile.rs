//! The reconciler: puts back what berth owns in the ruleset whenever
//! someone else removes it (`nft flush ruleset` from nftables.service, a
//! firewalld reload, configuration management), from berth's records
//! alone, and touches nothing it does not own.
//!
//! What it owns and where the record is:
//! - each bridge network's rules (masquerade, forward marks, isolation,
//!   its bridge in `berth-bridges`): the network's rules marker, written
//!   by berth-bridge and berth-overlay with the first attachment and by
//!   berthd at CreateNetwork ([`crate::firewall`]);
//! - the quiet chain of `bridge berth`, while any network is recorded,
//!   and each port's MAC spoof check (macspoofchk): the MAC is recorded
//!   in the attachments log;
//! - berth's rule in Docker's DOCKER-USER chain, when that chain exists;
//! - published ports (structure and every attachment's elements): the
//!   ports store ([`crate::ports`]);
//! - the sysctls berth turned on: forwarding for each family a network's
//!   bridge has a gateway address of, and route_localnet on the links of
//!   ports published on 127.0.0.1. These change without a ruleset event;
//!   every pass (so at the latest the slow interval's) checks them.
//!
//! A pass lists `inet berth` and `bridge berth` once each, compares them
//! with the records, and repairs only what is missing, so two reconcilers
//! on one host (berthd's and `berth watch`) agree instead of fighting:
//! the second finds nothing to do. A pass runs under berth's host-wide
//! lock, as every ADD and DEL changes records and rules under it, so a
//! DEL in progress finishes first and what it removed has no record left
//! to be put back from. Markers still pending belong to an ADD that was
//! killed (an ADD in progress holds the lock): they promise nothing and
//! are left to that container's DEL.
//!
//! [`watch`] runs passes when the kernel announces a ruleset change
//! (berth_kernel::nf_tables::RulesetEvents) by another process (its own
//! repairs do not wake it) and at a slow interval for what no event
//! reports (iptables-legacy, a lost event).

use std::time::{Duration, Instant};

use berth_kernel::nf_tables::{Batch, RulesetEvents, Seen};
use berth_kernel::parse_mac;

use crate::attachment::state::State;
use crate::firewall::{
    self, docker_user_in, ensure_docker_user_in, list_table_in, network_missing_from_listing,
    quiet_add_in, spoofchk_add_in, spoofchk_missing_from_listing, DockerUser, NetworkFirewall,
    QUIET_CHAIN, SPOOFCHK_TABLE, TABLE,
};
use crate::{gateway, kernel, ports, Error, Result};

/// After the first event of a burst (a flush is many), how long to let
/// the rest arrive before looking.
const SETTLE: Duration = Duration::from_millis(10);
/// Passes are at least this far apart: berth's own repairs and every
/// ADD and DEL are ruleset changes too, and must not keep a core busy.
const MIN_GAP: Duration = Duration::from_millis(100);
/// After a pass that could not repair something, the next is at least
/// this far away: each attempt changes the ruleset too (the quiet chain
/// is rewritten before a network's rules are refused), which would
/// otherwise start the next attempt at once, forever.
const RETRY_GAP: Duration = Duration::from_secs(1);

/// What one pass did.
#[derive(Debug, Default)]
pub struct Pass {
    /// What was missing and is back, one line each.
    pub repaired: Vec<String>,
    /// What is missing and could not be put back, with why.
    pub failed: Vec<String>,
}

/// One comparison of the ruleset with the records, repairing what is
/// missing. What one network's or one port's repair fails on is noted in
/// [`Pass::failed`] and the pass goes on; failing to list the ruleset or
/// to repair what all share (the quiet chain, DOCKER-USER, published
/// ports, sysctls) ends it with the error, for the next pass to try
/// again.
pub fn pass() -> Result<Pass> {
    let state = State::from_env();
    // Held to the end of the pass; the records are read once, under it.
    let _lock = state.lock()?;
    let networks: Vec<NetworkFirewall> = state
        .networks()
        .iter()
        .filter(|(_, m)| !m.pending)
        .map(|(name, m)| NetworkFirewall::of_marker(name, m))
        .collect();
    // Unreadable, the ports' records stop only their repair.
    let published = ports::recorded().unwrap_or_else(|e| {
        tracing::warn!("published ports cannot be checked: {e}");
        Vec::new()
    });
    // Nothing recorded, nothing owned: no nft.
    if networks.is_empty() && published.is_empty() {
        return Ok(Pass::default());
    }
    let mut repaired = Vec::new();
    let mut failed = Vec::new();
    let mut inet = list_table_in(None, "inet", TABLE)?;
    let bridge = if networks.is_empty() {
        None
    } else {
        list_table_in(None, "bridge", SPOOFCHK_TABLE)?
    };
    match repair_at_once(
        &state,
        &networks,
        &published,
        inet.as_ref(),
        bridge.as_ref(),
    ) {
        Ok(done) if done.is_empty() => {}
        Ok(done) => {
            repaired.extend(done);
            // What follows finds nothing missing, unless something changed
            // meanwhile.
            inet = list_table_in(None, "inet", TABLE)?;
        }
        // One object refused: the repair one by one below says which.
        Err(e) => tracing::debug!("repairing everything at once: {e}"),
    }
    for fw in &networks {
        let missing = match &inet {
            None => Some(format!("table inet {TABLE}")),
            Some(l) => network_missing_from_listing(l, &fw.rules()),
        };
        let Some(what) = missing else { continue };
        match firewall::restore(fw) {
            Ok(()) => repaired.push(format!("network {:?}: {what}", fw.network)),
            // The table is there but refuses berth's rules: another
            // program may have made objects of berth's names in it.
            Err(e) if inet.is_some() => failed.push(format!(
                "network {:?} (bridge {}): {what} is missing and could not be put back into \
                 table inet {TABLE}, which may hold another program's objects of berth's names: {e}",
                fw.network, fw.bridge
            )),
            Err(e) => failed.push(format!(
                "network {:?} (bridge {}): {what} is missing and could not be put back: {e}",
                fw.network, fw.bridge
            )),
        }
    }
    if !networks.is_empty() {
        let prefixes = crate::names::port_prefixes();
        // (Adding a check leaves the quiet chain as it is: this listing
        // still tells whether that is there.) The first listing still
        // holds unless a repair above changed the table.
        let bridge = if repaired.is_empty() {
            bridge
        } else {
            list_table_in(None, "bridge", SPOOFCHK_TABLE)?
        };
        for fw in &networks {
            let records = state.records(&fw.network);
            for (host_veth, mac) in state.spoof_macs(&fw.network) {
                let missing = match &bridge {
                    None => Some(format!("table bridge {SPOOFCHK_TABLE}")),
                    Some(l) => spoofchk_missing_from_listing(l, &host_veth),
                };
                let Some(what) = missing else { continue };
                let container = records
                    .iter()
                    .find(|(v, _)| *v == host_veth)
                    .and_then(|(_, r)| r.as_ref())
                    .map_or("", |r| r.container_id.as_str());
                let put = parse_mac(&mac)
                    .ok_or_else(|| format!("recorded MAC {mac:?} is not a MAC"))
                    .and_then(|m| {
                        spoofchk_add_in(None, &host_veth, &m, container).map_err(|e| e.to_string())
                    });
                match put {
                    Ok(()) => repaired.push(format!(
                        "MAC spoof check of {host_veth} (network {:?}): {what}",
                        fw.network
                    )),
                    Err(e) => failed.push(format!(
                        "MAC spoof check of {host_veth} (network {:?}): {what} is missing and \
                         could not be put back: {e}",
                        fw.network
                    )),
                }
            }
        }
        let quiet = bridge
            .as_ref()
            .and_then(|l| l.chain_rules(QUIET_CHAIN))
            .is_some_and(|r| r >= prefixes.len());
        if !quiet {
            quiet_add_in(None, &prefixes)?;
            repaired.push(format!("the quiet chain of table bridge {SPOOFCHK_TABLE}"));
        }
    }
    // Something is recorded (above): its traffic needs the exception.
    if docker_user_in(None)?.contains(&DockerUser::Missing) {
        ensure_docker_user_in(None)?;
        repaired.push("berth's rule in DOCKER-USER".into());
    }
    if !published.is_empty() {
        // The networks' repair may have made the table anew.
        let inet = if repaired.is_empty() {
            inet
        } else {
            list_table_in(None, "inet", TABLE)?
        };
        if let Some(what) = ports::repair(inet.as_ref(), &published)? {
            repaired.push(format!("published ports: {what}"));
        }
    }
    // The sysctls berth set: forwarding for the networks' gateways,
    // route_localnet for ports published on 127.0.0.1.
    let bridges = networks.iter().map(|fw| fw.bridge.as_str());
    for key in gateway::repair_forwarding(bridges)?
        .into_iter()
        .chain(ports::repair_localnet(&published)?)
    {
        repaired.push(format!("sysctl {key}, which was turned off"));
    }
    Ok(Pass { repaired, failed })
}

/// Everything `inet` and `bridge` (the listings; None: the table is gone)
/// lack of the records, put back in one transaction (after a flush: the
/// networks' rules, the quiet chain, the spoof checks and the published
/// ports), so a port answers again once that one commit is in, rather
/// than after one commit per object. Returns what was missing, one line
/// each (empty: nothing). Err if an object is refused: nothing is applied
/// then, and the repair one by one finds which.
fn repair_at_once(
    state: &State,
    networks: &[NetworkFirewall],
    published: &[firewall::PublishedPorts],
    inet: Option<&firewall::TableListing>,
    bridge: Option<&firewall::TableListing>,
) -> Result<Vec<String>> {
    let mut batch = Batch::new();
    let mut done = Vec::new();
    let mut quiet_in_batch = false;
    for fw in networks {
        let missing = match inet {
            None => Some(format!("table inet {TABLE}")),
            Some(l) => network_missing_from_listing(l, &fw.rules()),
        };
        if let Some(what) = missing {
            // With the quiet chain: a network's batch refills it.
            batch.extend(firewall::network_batch(&fw.rules())?);
            quiet_in_batch = true;
            done.push(format!("network {:?}: {what}", fw.network));
        }
    }
    if !networks.is_empty() {
        let prefixes = crate::names::port_prefixes();
        let quiet = bridge
            .and_then(|l| l.chain_rules(QUIET_CHAIN))
            .is_some_and(|r| r >= prefixes.len());
        if !quiet {
            if !quiet_in_batch {
                batch.extend(firewall::quiet_batch(&prefixes)?);
            }
            done.push(format!("the quiet chain of table bridge {SPOOFCHK_TABLE}"));
        }
        for fw in networks {
            let records = state.records(&fw.network);
            for (host_veth, mac) in state.spoof_macs(&fw.network) {
                let missing = match bridge {
                    None => Some(format!("table bridge {SPOOFCHK_TABLE}")),
                    Some(l) => spoofchk_missing_from_listing(l, &host_veth),
                };
                let Some(what) = missing else { continue };
                let Some(mac) = parse_mac(&mac) else {
                    // Reported by the repair one by one.
                    continue;
                };
                let container = records
                    .iter()
                    .find(|(v, _)| *v == host_veth)
                    .and_then(|(_, r)| r.as_ref())
                    .map_or("", |r| r.container_id.as_str());
                batch.extend(firewall::spoofchk_add_batch(&host_veth, &mac, container)?);
                done.push(format!(
                    "MAC spoof check of {host_veth} (network {:?}): {what}",
                    fw.network
                ));
            }
        }
    }
    let ports = match ports::missing(inet, published) {
        Some(what) => {
            done.push(format!("published ports: {what}"));
            Some(ports::Rebuild::begin(published)?)
        }
        None => None,
    };
    if let Some(r) = &ports {
        batch.extend(r.batch.clone());
    }
    if batch.is_empty() {
        return Ok(done);
    }
    batch
        .commit(None, "put back berth's rules")
        .map_err(Error::firewall)?;
    if let Some(r) = ports {
        r.done()?;
    }
    Ok(done)
}

/// Runs a pass, logging each repair with how long it took from `seen`
/// (when the change was noticed) until it was back, and each failure, and
/// telling `counted` how many of each (a pass that ends in an error
/// counts as one failure). True if everything missing is back.
fn pass_logged(seen: Instant, counted: &mut impl FnMut(usize, usize)) -> bool {
    match pass() {
        Ok(done) => {
            let ms = seen.elapsed().as_secs_f64() * 1e3;
            counted(done.repaired.len(), done.failed.len());
            for what in done.repaired {
                tracing::info!("repaired {what}, {ms:.1} ms after the change was seen");
            }
            for what in &done.failed {
                tracing::warn!("{what}");
            }
            done.failed.is_empty()
        }
        Err(e) => {
            counted(0, 1);
            tracing::warn!("reconciling: {e}");
            false
        }
    }
}

/// Reconciles forever in the caller's namespace: a pass at start, one
/// after each burst of ruleset changes, and one every `interval`. Never
/// returns; a failing pass is logged and the next one tries again. After
/// each pass, `counted` is told how many objects it repaired and how many
/// it could not (the metrics' counters).
pub fn watch(interval: Duration, mut counted: impl FnMut(usize, usize)) -> ! {
    let mut events = match RulesetEvents::subscribe() {
        Ok(e) => Some(e),
        Err(e) => {
            // Without events, look often enough to repair within a second.
            tracing::warn!("no ruleset events ({e}): checking every 500 ms instead");
            None
        }
    };
    let mut whole = pass_logged(Instant::now(), &mut counted);
    tracing::info!(
        "watching berth's rules ({}; every {} s regardless)",
        if events.is_some() {
            "on each ruleset change"
        } else {
            "every 500 ms"
        },
        interval.as_secs_f64()
    );
    let mut last = Instant::now();
    loop {
        // A pass that left something broken is tried again soon: its own
        // commits no longer wake the loop.
        let next = if whole { interval } else { RETRY_GAP };
        let seen = match &mut events {
            Some(ev) => ev
                .wait(next.saturating_sub(last.elapsed()))
                .unwrap_or_else(|e| {
                    tracing::warn!("{}", kernel(e));
                    std::thread::sleep(MIN_GAP);
                    Seen::Changes
                }),
            None => {
                std::thread::sleep(Duration::from_millis(500));
                Seen::Changes
            }
        };
        // This process's own repairs: nothing to compare.
        if seen == Seen::OwnCommits && last.elapsed() < next {
            continue;
        }
        let seen_at = Instant::now();
        if seen == Seen::Changes {
            std::thread::sleep(SETTLE);
            if let Some(ev) = &mut events {
                let _ = ev.drain();
            }
        }
        let gap = if whole { MIN_GAP } else { RETRY_GAP };
        if let Some(wait) = gap.checked_sub(last.elapsed()) {
            std::thread::sleep(wait);
        }
        whole = pass_logged(seen_at, &mut counted);
        last = Instant::now();
    }
}
