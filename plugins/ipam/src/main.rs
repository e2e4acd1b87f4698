//! berth-ipam: the CNI IPAM plugin binary. Without CNI_COMMAND, `berth-ipam
//! import ...` imports a host-local directory; anything else goes to the CNI
//! dispatcher (which prints the about text when CNI_COMMAND is unset).

fn main() {
    if std::env::var("CNI_COMMAND").unwrap_or_default().is_empty() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.first().map(String::as_str) == Some("import") {
            std::process::exit(berth_ipam::cli::run_import(&args[1..]));
        }
    }
    cni::skel::run(&berth_ipam::IpamPlugin)
}
