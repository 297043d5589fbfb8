//! `scute-make-bundle DIR CMD [ARGS...]`: a busybox OCI bundle for demos.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: scute-make-bundle DIR CMD [ARGS...]");
        std::process::exit(2);
    }
    let cmd: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    if let Err(e) = scute_testkit::busybox_bundle(std::path::Path::new(&args[0]), &cmd) {
        eprintln!("scute-make-bundle: {e}");
        std::process::exit(1);
    }
}
