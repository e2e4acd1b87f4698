fn main() {
    cni::skel::run(&berth_overlay::OverlayPlugin)
}
