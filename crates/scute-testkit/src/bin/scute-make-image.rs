//! `scute-make-image OUT.tar`: the busybox OCI image tar for `ctr image import`.

fn main() {
    let args = scute_testkit::command_args("scute-make-image OUT.tar", 1);
    if let Err(e) = scute_testkit::image::busybox_image_tar(std::path::Path::new(&args[0])) {
        eprintln!("scute-make-image: {e}");
        std::process::exit(1);
    }
    println!("{}", scute_testkit::image::IMAGE);
}
