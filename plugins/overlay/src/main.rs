//! `berth-overlay`: the CNI plugin, or with `agent --conf FILE` the node
//! agent that keeps the peers of FILE (the plugin's config) programmed.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by SIGTERM or SIGINT: the agent gives its lease back and exits.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("agent") {
        let conf = match (args.get(1).map(String::as_str), args.get(2)) {
            (Some("--conf"), Some(path)) => std::path::PathBuf::from(path),
            _ => {
                eprintln!("usage: berth-overlay agent --conf FILE");
                std::process::exit(2);
            }
        };
        let handler = request_stop as extern "C" fn(libc::c_int);
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
            libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        }
        if let Err(e) =
            berth_overlay::run_agent(&conf, std::time::Duration::from_millis(250), &STOP)
        {
            eprintln!("berth-overlay agent: {}", e.msg);
            std::process::exit(1);
        }
        return;
    }
    cni::skel::run(&berth_overlay::OverlayPlugin)
}
