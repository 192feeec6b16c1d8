//! Images across racks (`http.origin`), nothing mocked: one origin fabric and three rack
//! fabrics, each a `bootfabric` daemon in its own namespace, the racks joined to the origin
//! by a bridge and each to its own client namespace. 30 curl clients (10 per rack, all at
//! once) fetch a 256 MiB image from their rack: every one gets the file's bytes (SHA-256
//! compared) and the origin, by its own metrics, served the image exactly 3 times. Before
//! that: paths no profile names are 404s that cost the origin nothing, and a Range request
//! for the image on a rack that does not have it yet is answered with the right bytes.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Instant,
};

use bootfabric_lab::{
    content, metrics, require_programs, require_root, run, sample, Bridge, Daemon, Netns, TempDir,
};

const IMAGE_MIB: usize = 256;
const RACKS: usize = 3;
const CLIENTS_PER_RACK: usize = 10;

/// A 256 MiB image: random 1 MiB blocks, each stamped with its index (misplaced blocks
/// change the digest), written in blocks so the test does not hold it twice.
fn write_image(path: &std::path::Path) {
    let block = content(1 << 20, 17);
    let mut f = std::fs::File::create(path).expect("image");
    for i in 0..IMAGE_MIB {
        let mut b = block.clone();
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        f.write_all(&b).expect("write");
    }
}

fn sha256sum(args: &mut Command) -> String {
    let out = run(args).expect("sha256sum");
    out.split_whitespace().next().unwrap_or_default().to_owned()
}

fn config(iface: &str, root: &std::path::Path, extra: &str) -> String {
    format!(
        "[daemon]\nstate_dir = \"state\"\ninventory = \"hosts.toml\"\n[fabric]\ninterfaces = [\"{iface}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[xdp]\nmode = \"off\"\n[http]\nroot = \"{}\"\n{extra}",
        root.display()
    )
}

#[test]
fn three_racks_pull_a_256_mib_image_from_the_origin_three_times() {
    let t = "three_racks_pull_a_256_mib_image_from_the_origin_three_times";
    if !require_root(t) || !require_programs(t, &["curl", "sha256sum", "sh"]) {
        return;
    }
    let dir = TempDir::new().expect("dir");
    let origin_root = dir.path.join("origin");
    std::fs::create_dir_all(origin_root.join("images")).expect("origin root");
    let image = origin_root.join("images/big.img");
    write_image(&image);
    let digest = sha256sum(Command::new("sha256sum").arg(&image));
    let inventory = format!(
        "[profiles.big]\nkernel = \"images/big.img\"\nsha256 = {{ \"images/big.img\" = \"{digest}\" }}\n"
    );

    let mut core = Bridge::new().expect("bridge");
    let origin_ns = Netns::new("origin").expect("origin ns");
    core.plug(&origin_ns, "core0", "10.80.0.1/24")
        .expect("plug");
    let origin = Daemon::start(
        &origin_ns,
        &config("core0", &origin_root, ""),
        &[("hosts.toml", &inventory)],
    )
    .expect("origin daemon");

    let mut racks = Vec::new();
    for r in 1..=RACKS {
        let ns = Netns::new(&format!("rack{r}")).expect("rack ns");
        core.plug(&ns, "core0", &format!("10.80.0.{}/24", 10 + r))
            .expect("plug");
        let clients = Netns::new(&format!("cli{r}")).expect("client ns");
        bootfabric_lab::veth(
            &ns,
            "fabric0",
            &format!("10.81.{r}.1/24"),
            &clients,
            "client0",
            &format!("10.81.{r}.2/24"),
        )
        .expect("veth");
        let root = dir.path.join(format!("rack{r}"));
        std::fs::create_dir_all(&root).expect("rack root");
        let daemon = Daemon::start(
            &ns,
            &config(
                "fabric0",
                &root,
                "origin = \"http://10.80.0.1/\"\norigin_timeout_s = 300\n",
            ),
            &[("hosts.toml", &inventory)],
        )
        .expect("rack daemon");
        racks.push((ns, clients, daemon, root));
    }
    let origin_files = || {
        let text = metrics(&origin_ns, &origin).expect("origin metrics");
        let served = sample(
            &text,
            "bootfabric_http_requests_total",
            &[("route", "file"), ("code", "200")],
        );
        let all: f64 = text
            .lines()
            .filter(|l| l.starts_with("bootfabric_http_requests_total"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        let bytes = sample(&text, "bootfabric_http_bytes_total", &[]).unwrap_or(0.0);
        (served.unwrap_or(0.0), all, bytes)
    };

    // A hostile client asks a rack for paths no profile names: 404 (403 for `..`), and the
    // origin is never asked.
    let cli1 = &racks[0].1;
    for path in [
        "/images/other.img",
        "/etc/passwd",
        "/images/../images/x",
        "/x/big.img",
    ] {
        let out = run(cli1.command("curl").args([
            "-s",
            "--path-as-is",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://10.81.1.1{path}"),
        ]))
        .expect("curl");
        assert!(out == "404" || out == "403", "{path}: {out}");
    }
    assert_eq!(
        origin_files().1,
        0.0,
        "the origin heard of a path no profile names"
    );

    // A Range request on rack 1 for the image it does not have yet.
    let started = Instant::now();
    let piece = run(cli1.command("sh").args([
        "-c",
        "curl -sS --fail -r 100000000-100999999 http://10.81.1.1/images/big.img | sha256sum",
    ]))
    .expect("range");
    let want = sha256sum(Command::new("sh").arg("-c").arg(format!(
        "tail -c +100000001 {} | head -c 1000000 | sha256sum",
        image.display()
    )));
    assert_eq!(
        piece.split_whitespace().next(),
        Some(want.as_str()),
        "range piece"
    );
    eprintln!(
        "{t}: range on a cold rack answered in {:.1} s (the whole image fetched first)",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(origin_files().0, 1.0);

    // 30 clients at once, 10 per rack: racks 2 and 3 fetch on the first miss, rack 1 has it.
    let started = Instant::now();
    let mut children = Vec::new();
    for (r, (_, clients, _, _)) in racks.iter().enumerate() {
        for _ in 0..CLIENTS_PER_RACK {
            let child = clients
                .command("sh")
                .args([
                    "-c",
                    &format!(
                        "curl -sS --fail --max-time 120 http://10.81.{}.1/images/big.img | sha256sum",
                        r + 1
                    ),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("curl");
            // Killed with their namespace if the test fails before they end.
            children.push(child);
        }
    }
    let mut digests = Vec::new();
    for c in children {
        let out = c.wait_with_output().expect("curl output");
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        digests.push(
            text.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{t}: {} clients × {IMAGE_MIB} MiB in {secs:.1} s",
        digests.len()
    );
    assert_eq!(digests.len(), RACKS * CLIENTS_PER_RACK);
    for d in &digests {
        assert_eq!(d, &digest, "a client got other bytes");
    }

    // The origin's own count: the image, three times (one per rack), and its bytes.
    let (served, all, bytes) = origin_files();
    assert_eq!(served, RACKS as f64, "origin file responses");
    assert_eq!(all, RACKS as f64, "origin requests of any kind");
    let size = (IMAGE_MIB << 20) as f64;
    assert!(
        bytes >= 3.0 * size && bytes < 4.0 * size,
        "origin sent {bytes} bytes"
    );
    for (r, (ns, _, daemon, root)) in racks.iter().enumerate() {
        let text = metrics(ns, daemon).expect("rack metrics");
        assert_eq!(
            sample(
                &text,
                "bootfabric_http_origin_fetches_total",
                &[("result", "ok")]
            ),
            Some(1.0),
            "rack {}",
            r + 1
        );
        assert_eq!(
            sample(&text, "bootfabric_http_origin_waiters", &[]),
            Some(0.0)
        );
        let stored = sha256sum(Command::new("sha256sum").arg(root.join("images/big.img")));
        assert_eq!(stored, digest, "rack {} stored other bytes", r + 1);
    }
}
