fn main() {
    cni::skel::run(&berth_bandwidth::BandwidthPlugin)
}
