//! berth-ipam: the CNI IPAM plugin binary. Without CNI_COMMAND and with
//! arguments, `berth-ipam import ...` imports a host-local directory (clap
//! parses them, see `cli`); anything else goes to the CNI dispatcher (which
//! prints the about text when CNI_COMMAND is unset) without touching clap.

fn main() {
    if std::env::var("CNI_COMMAND").unwrap_or_default().is_empty() && std::env::args_os().len() > 1
    {
        std::process::exit(berth_ipam::cli::run(std::env::args_os()));
    }
    cni::skel::run(&berth_ipam::IpamPlugin)
}
