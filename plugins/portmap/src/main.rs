//! `berth-portmap`: the CNI plugin, or with `proxy ...` one relay of a
//! published port on ::1 (started by the plugin itself, see `proxy`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("proxy") {
        berth_portmap::proxy::run(&args[1..]);
    }
    cni::skel::run(&berth_portmap::PortmapPlugin)
}
