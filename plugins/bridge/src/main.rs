fn main() {
    cni::skel::run(&berth_bridge::BridgePlugin)
}
