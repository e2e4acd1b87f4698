fn main() {
    cni::skel::run(&berth_portmap::PortmapPlugin)
}
