fn main() {
    cni::skel::run(&berth_host::LoopbackPlugin)
}
