//! `scute-make-image OUT.tar`: the busybox OCI image tar for `ctr image import`.

fn main() {
    let Some(out) = std::env::args().nth(1) else {
        eprintln!("usage: scute-make-image OUT.tar");
        std::process::exit(2);
    };
    if let Err(e) = scute_testkit::image::busybox_image_tar(std::path::Path::new(&out)) {
        eprintln!("scute-make-image: {e}");
        std::process::exit(1);
    }
    println!("{}", scute_testkit::image::IMAGE);
}
