//! Builds the lab's boot image (Debian kernel + busybox initramfs) into a cache folder and
//! prints where it is: `bootimage [CACHE]` (default `target/lab-cache`).

fn main() {
    let cache = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("target/lab-cache"));
    match bootfabric_lab::bootimage::ensure(&cache) {
        Ok(b) => println!(
            "kernel {}\ninitramfs {}",
            b.kernel.display(),
            b.initramfs.display()
        ),
        Err(e) => {
            eprintln!("bootimage: {e}");
            std::process::exit(1);
        }
    }
}
