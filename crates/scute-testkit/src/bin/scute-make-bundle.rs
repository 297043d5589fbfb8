//! `scute-make-bundle DIR CMD [ARGS...]`: a busybox OCI bundle for demos.

fn main() {
    let args = scute_testkit::command_args("scute-make-bundle DIR CMD [ARGS...]", 2);
    let cmd: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    if let Err(e) = scute_testkit::busybox_bundle(std::path::Path::new(&args[0]), &cmd) {
        eprintln!("scute-make-bundle: {e}");
        std::process::exit(1);
    }
}
