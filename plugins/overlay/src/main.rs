//! `berth-overlay`: the CNI plugin, or with `agent --conf FILE` the node
//! agent that keeps the peers of FILE (the plugin's config) programmed.

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
        if let Err(e) = berth_overlay::run_agent(&conf, std::time::Duration::from_millis(250)) {
            eprintln!("berth-overlay agent: {}", e.msg);
            std::process::exit(1);
        }
        return;
    }
    cni::skel::run(&berth_overlay::OverlayPlugin)
}
