//! TFTP in the kernel, held side by side with the userspace path under `BPF_PROG_TEST_RUN`:
//! the TC program gets the ACKs of a registered lock-step transfer and its DATA frames are
//! compared, byte for byte, with the frame the userspace path sends for the same block (its
//! state machine's block range and its DATA header, in the headers the kernel's stack
//! gives a datagram from an unconnected socket). Rollover, duplicates, the last block and
//! frames that are not the program's are covered, and the run time per DATA frame is
//! printed (the figure `bench/tftp` reports).

use std::net::Ipv4Addr;

use aya::{
    maps::Array,
    programs::{SchedClassifier, TestRun, TestRunOptions},
    Ebpf, EbpfLoader,
};
use bootfabric::{
    services::tftp::{options::Negotiated, packet, transfer::Transfer},
    xdp::tftp::KernelTftp,
};
use bootfabric_abi::{
    tftp::{XferKey, MAP_TFTP_CHUNKS, PROGRAM_TFTP},
    ClassifyConfig, MAP_CLASSIFY_CONFIG,
};
use bootfabric_lab::{
    capture::Capture,
    content, require, require_root,
    xdp_harness::{checksum, udp_checksum},
    Netns, TempDir,
};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const SERVER_MAC: [u8; 6] = [0x02, 0xbf, 0, 0, 0, 1];
const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 2];
const TID: u16 = 50_007;
const CLIENT_PORT: u16 = 40_123;
/// `TC_ACT_OK` and `TC_ACT_REDIRECT`.
const PASS: u32 = 0;
const REDIRECT: u32 = 7;

/// The loaded program, its maps as the daemon holds them, and the file root.
struct Bench {
    ebpf: Ebpf,
    kernel: KernelTftp,
    root: TempDir,
}

fn bench(test: &str) -> Option<Bench> {
    if !require_root(test) {
        return None;
    }
    let object = bootfabric::xdp::embedded_object();
    if !require(
        object.is_some(),
        test,
        "the binary has no eBPF object (build with `cargo xtask build`)",
    ) {
        return None;
    }
    let object = object?;
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(MAP_TFTP_CHUNKS, 64)
        .load(object)
        .expect("load the object");
    let program: &mut SchedClassifier = ebpf
        .program_mut(PROGRAM_TFTP)
        .expect("program")
        .try_into()
        .expect("a TC program");
    program.load().expect("verifier");
    let mut cfg: Array<_, ClassifyConfig> =
        Array::try_from(ebpf.map_mut(MAP_CLASSIFY_CONFIG).expect("config map")).expect("array");
    cfg.set(
        0,
        ClassifyConfig {
            tftp_data_first: 50_000,
            tftp_data_last: 50_099,
            ..ClassifyConfig::default()
        },
        0,
    )
    .expect("config");
    let kernel = KernelTftp::new(&mut ebpf).expect("maps");
    Some(Bench {
        ebpf,
        kernel,
        root: TempDir::new().expect("root"),
    })
}

impl Bench {
    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>, u64) {
        let p: &SchedClassifier = self
            .ebpf
            .program(PROGRAM_TFTP)
            .expect("program")
            .try_into()
            .expect("TC");
        let mut out = vec![0u8; 4096];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let r = p.test_run(opts).expect("test run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out, r.duration.as_nanos() as u64)
    }
}

/// An ACK from the client for wire block `block`; `partial` leaves the UDP checksum as a
/// local socket over veth sends it (the pseudo-header sum, for offload).
fn ack(block: u16, port: u16, partial: bool) -> Vec<u8> {
    let payload = [0u8, 4, (block >> 8) as u8, block as u8];
    let mut f = ethernet_ipv4(CLIENT_MAC, SERVER_MAC, CLIENT, SERVER, 0, 64);
    let mut udp = Vec::new();
    udp.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&12u16.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&payload);
    let c = if partial {
        pseudo_sum(CLIENT, SERVER, 12)
    } else {
        udp_checksum(CLIENT, SERVER, &udp)
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    finish(&mut f, &udp);
    f
}

/// The frame the userspace path puts on the wire for absolute block `k` of `t`: the
/// payload its own framing builds (`packet::data_header`, `Transfer::block_range`), in the
/// headers the stack gives a datagram from the transfer's unconnected socket (DF; the ID,
/// which the stack draws from a secret hash, 0 as the program sends it).
fn userspace_frame(
    t: &Transfer,
    k: u64,
    file: &[u8],
    ttl: u8,
    partial: bool,
    port: u16,
) -> Vec<u8> {
    let (offset, len) = t.block_range(k, file.len() as u64);
    let mut payload = Vec::new();
    packet::data_header(Transfer::wire_block(k), &mut payload);
    payload.extend_from_slice(&file[offset as usize..(offset + len) as usize]);
    let mut f = ethernet_ipv4(SERVER_MAC, CLIENT_MAC, SERVER, CLIENT, 0x4000, ttl);
    let ulen = (8 + payload.len()) as u16;
    let mut udp = Vec::new();
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    udp.extend_from_slice(&ulen.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&payload);
    let c = if partial {
        pseudo_sum(SERVER, CLIENT, ulen)
    } else {
        udp_checksum(SERVER, CLIENT, &udp)
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    finish(&mut f, &udp);
    f
}

/// Ethernet and an IPv4 header (total length filled in by [`finish`]).
fn ethernet_ipv4(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    frag: u16,
    ttl: u8,
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&frag.to_be_bytes());
    f.extend_from_slice(&[ttl, 17, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f
}

fn finish(f: &mut Vec<u8>, udp: &[u8]) {
    let total = (20 + udp.len()) as u16;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    let c = checksum(&f[14..34], 0);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(udp);
}

/// The pseudo-header sum a stack leaves in a CHECKSUM_PARTIAL datagram's checksum field.
fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, udp_len: u16) -> u16 {
    let mut sum: u32 = 17 + u32::from(udp_len);
    for o in [src.octets(), dst.octets()] {
        sum += u32::from(u16::from_be_bytes([o[0], o[1]]))
            + u32::from(u16::from_be_bytes([o[2], o[3]]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// `frame` (an ACK) as a machine on the segment sends it that knows a transfer's ports but
/// is not its client: another source address, the IPv4 checksum made good again.
fn from_stranger(mut frame: Vec<u8>) -> Vec<u8> {
    frame[26..30].copy_from_slice(&[10, 77, 0, 66]);
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&frame[14..34], 0);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    frame
}

fn key(port: u16) -> XferKey {
    XferKey {
        client_ip: CLIENT.octets(),
        server_ip: SERVER.octets(),
        client_port: CLIENT_PORT.to_be_bytes(),
        server_port: port.to_be_bytes(),
    }
}

fn lock_step(blksize: u16, size: u64) -> Transfer {
    windowed(blksize, 1, size)
}

fn windowed(blksize: u16, windowsize: u16, size: u64) -> Transfer {
    let n = Negotiated {
        blksize,
        windowsize,
        timeout: 1,
        ack: vec![],
        timeout_capped: false,
    };
    Transfer::start(&n, size, 5).0
}

/// Runs `f` in a namespace of its own: test runs report its loopback as the ingress device.
fn isolated(f: impl FnOnce() + Send + 'static) {
    let ns = Netns::new("tftpk").expect("netns");
    ns.run(f).expect("namespace");
}

#[test]
fn kernel_data_frames_equal_the_userspace_paths() {
    isolated(|| {
        let Some(b) = bench("kernel_data_frames_equal_the_userspace_paths") else {
            return;
        };
        // Sizes at a block edge, one past it, and files spanning several slots.
        let files = [
            ("a.bin", 512 * 9, 512u16),
            ("d.bin", 200_000, 1024),
            ("e.bin", 50_000, 516),
            ("b.bin", 1468 * 40 + 1, 1468),
            ("c.bin", 100_000, 1432),
        ];
        for (name, size, _) in files {
            std::fs::write(b.root.path.join(name), content(size, size as u32)).expect("file");
        }
        let names: Vec<String> = files.iter().map(|f| f.0.to_owned()).collect();
        assert!(b.kernel.refresh(&b.root.path, &names).is_empty());
        let ttl = std::fs::read_to_string("/proc/sys/net/ipv4/ip_default_ttl")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(64u8);
        let mut timed = (0u64, 0u64);
        for (i, (name, size, blksize)) in files.into_iter().enumerate() {
            let file = std::fs::read(b.root.path.join(name)).expect("read");
            let meta = std::fs::metadata(b.root.path.join(name)).expect("meta");
            let copy = b.kernel.copy_of(name, &meta).expect("hot");
            let t = lock_step(blksize, size as u64);
            let port = TID + i as u16;
            let port_key = key(port);
            let reg = b
                .kernel
                .register(port_key, copy, blksize, 1, t.blocks(), 1)
                .expect("register");
            for k in 1..t.blocks() - 1 {
                // Every other ACK as a local socket over veth sends it.
                let partial = k % 2 == 0;
                let (action, frame, ns) = b.run(&ack(Transfer::wire_block(k), port, partial));
                assert_eq!(action, REDIRECT, "{name}: ACK {k} not answered");
                let want = userspace_frame(&t, k + 1, &file, ttl, partial, port);
                assert_eq!(frame, want, "{name}: block {} differs", k + 1);
                timed = (timed.0 + ns, timed.1 + 1);
                // The same ACK again: a duplicate, left to userspace, frame untouched.
                let dup = ack(Transfer::wire_block(k), port, false);
                let (action, frame, _) = b.run(&dup);
                assert_eq!((action, &frame), (PASS, &dup), "{name}: duplicate ACK {k}");
            }
            // The ACK before the last block: userspace sends the last one.
            let last = ack(Transfer::wire_block(t.blocks() - 1), port, false);
            let (action, frame, _) = b.run(&last);
            assert_eq!(
                (action, &frame),
                (PASS, &last),
                "{name}: the last block is userspace's"
            );
            let p = reg.progress().expect("progress");
            assert_eq!((p.sent, p.answered), (t.blocks() - 1, t.blocks() - 2));
            drop(reg);
            // Unregistered: nothing is answered any more.
            let (action, _, _) = b.run(&ack(1, port, false));
            assert_eq!(action, PASS);
        }
        // A machine on the segment that knows a live transfer's ports but not its client's
        // address gets nothing from the kernel: the four-tuple is the key.
        let t = lock_step(512, 512 * 9);
        std::fs::write(b.root.path.join("s.bin"), content(512 * 9, 11)).expect("file");
        assert!(b
            .kernel
            .refresh(&b.root.path, &["s.bin".to_owned()])
            .is_empty());
        let meta = std::fs::metadata(b.root.path.join("s.bin")).expect("meta");
        let copy = b.kernel.copy_of("s.bin", &meta).expect("hot");
        let reg = b
            .kernel
            .register(key(TID + 99), copy, 512, 1, t.blocks(), 1)
            .expect("register");
        let spoofed = from_stranger(ack(1, TID + 99, false));
        let (action, frame, _) = b.run(&spoofed);
        assert_eq!((action, &frame), (PASS, &spoofed), "a stranger's ACK");
        assert_eq!(reg.progress().expect("progress").answered, 0);
        drop(reg);
        // A port outside the transfer range, and a DATA frame to the port, are not the
        // program's.
        let (action, _, _) = b.run(&ack(1, 69, false));
        assert_eq!(action, PASS);
        println!(
            "BPF_PROG_TEST_RUN: {} ns per DATA frame ({} frames, blksize 512-1468)",
            timed.0 / timed.1.max(1),
            timed.1
        );
    });
}

/// A window leaves as the userspace path's blocks: every block but the last as a clone sent
/// at once (captured on the namespace's loopback, the device test runs report as the
/// ingress), the last in the ACK's own buffer. The window that holds the file's last block,
/// and an ACK from inside a window (the client lost a block), are userspace's.
#[test]
fn windows_leave_as_the_userspace_paths_blocks() {
    const TEST: &str = "windows_leave_as_the_userspace_paths_blocks";
    if !require_root(TEST) {
        return;
    }
    let ns = Netns::new("tftpw").expect("netns");
    let capture = Capture::start(&ns, "lo").expect("capture");
    let expected = ns
        .run(|| {
            let b = bench(TEST)?;
            let ttl = std::fs::read_to_string("/proc/sys/net/ipv4/ip_default_ttl")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(64u8);
            // OVMF's window and the largest the kernel takes, full and short last windows.
            let cases = [
                ("w4.efi", 1468 * 37 + 100, 1468u16, 4u16),
                ("w8.efi", 512 * 64, 512, 8),
                ("w3.efi", 1024 * 29 + 1, 1024, 3),
                ("w8b.efi", 1468 * 40 + 5, 1468, 8),
            ];
            for (name, size, _, _) in cases {
                std::fs::write(b.root.path.join(name), content(size, size as u32)).expect("file");
            }
            let names: Vec<String> = cases.iter().map(|c| c.0.to_owned()).collect();
            assert!(b.kernel.refresh(&b.root.path, &names).is_empty());
            let mut clones = Vec::new();
            let mut timed = (0u64, 0u64);
            for (i, (name, size, blksize, window)) in cases.into_iter().enumerate() {
                let file = std::fs::read(b.root.path.join(name)).expect("read");
                let meta = std::fs::metadata(b.root.path.join(name)).expect("meta");
                let copy = b.kernel.copy_of(name, &meta).expect("hot");
                let t = windowed(blksize, window, size as u64);
                let w = u64::from(window);
                let port = TID + i as u16;
                let reg = b
                    .kernel
                    .register(key(port), copy, blksize, window, t.blocks(), w)
                    .expect("register");
                let mut sent = w;
                while sent + w < t.blocks() {
                    let partial = (sent / w) % 2 == 1;
                    // A gap inside the window just sent: the client's ACK goes to userspace.
                    if w > 1 {
                        let gap = ack(Transfer::wire_block(sent - 1), port, partial);
                        let (action, frame, _) = b.run(&gap);
                        assert_eq!((action, &frame), (PASS, &gap), "{name}: mid-window ACK");
                    }
                    // A stranger who knows the ports gets nothing, not even a clone.
                    let stranger = from_stranger(ack(Transfer::wire_block(sent), port, false));
                    let (action, frame, _) = b.run(&stranger);
                    assert_eq!(
                        (action, &frame),
                        (PASS, &stranger),
                        "{name}: a stranger's ACK"
                    );
                    let (action, frame, ns) =
                        b.run(&ack(Transfer::wire_block(sent), port, partial));
                    assert_eq!(action, REDIRECT, "{name}: ACK {sent} not answered");
                    for k in sent + 1..sent + w {
                        clones.push(userspace_frame(&t, k, &file, ttl, partial, port));
                    }
                    let last = userspace_frame(&t, sent + w, &file, ttl, partial, port);
                    assert_eq!(frame, last, "{name}: block {} differs", sent + w);
                    timed = (timed.0 + ns, timed.1 + w);
                    // The same ACK again (a duplicate, or a replay): no second window.
                    let dup = ack(Transfer::wire_block(sent), port, false);
                    let (action, frame, _) = b.run(&dup);
                    assert_eq!((action, &frame), (PASS, &dup), "{name}: a replayed ACK");
                    sent += w;
                }
                // The window with the last block is userspace's.
                let end = ack(Transfer::wire_block(sent), port, false);
                let (action, frame, _) = b.run(&end);
                assert_eq!((action, &frame), (PASS, &end), "{name}: the last window");
                let p = reg.progress().expect("progress");
                assert_eq!((p.sent, p.answered), (sent, sent - w), "{name}");
            }
            println!(
                "BPF_PROG_TEST_RUN: {} ns per DATA frame in windows ({} frames, windows 3-8)",
                timed.0 / timed.1.max(1),
                timed.1
            );
            Some(clones)
        })
        .expect("namespace");
    let captured = capture.finish();
    let Some(expected) = expected else {
        return;
    };
    assert_eq!(captured.len(), expected.len(), "clones on the wire");
    for (i, (got, want)) in captured.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "clone {i} differs");
    }
}

/// Block numbers roll over at 65535 to 0 as the userspace path's do, and the kernel keeps
/// the 64-bit position: with 8-byte blocks, 65,540 blocks.
#[test]
fn block_numbers_roll_over_as_the_userspace_paths_do() {
    isolated(|| {
        let Some(b) = bench("block_numbers_roll_over_as_the_userspace_paths_do") else {
            return;
        };
        let size = 65_539 * 8 + 3;
        std::fs::write(b.root.path.join("r.bin"), content(size, 5)).expect("file");
        assert!(b
            .kernel
            .refresh(&b.root.path, &["r.bin".to_owned()])
            .is_empty());
        let file = std::fs::read(b.root.path.join("r.bin")).expect("read");
        let meta = std::fs::metadata(b.root.path.join("r.bin")).expect("meta");
        let copy = b.kernel.copy_of("r.bin", &meta).expect("hot");
        let t = lock_step(8, size as u64);
        let reg = b
            .kernel
            .register(key(TID), copy, 8, 1, t.blocks(), 1)
            .expect("register");
        for k in 1..t.blocks() - 1 {
            let (action, frame, _) = b.run(&ack(Transfer::wire_block(k), TID, false));
            assert_eq!(action, REDIRECT, "ACK {k}");
            if k > 65_530 && k < 65_540 || k % 10_000 == 0 {
                assert_eq!(
                    frame,
                    userspace_frame(&t, k + 1, &file, frame[22], false, TID),
                    "block {}",
                    k + 1
                );
            }
        }
        assert_eq!(reg.progress().expect("progress").sent, t.blocks() - 1);
    });
}

/// A changed file gets a new copy; a transfer registered on the old copy keeps reading it
/// until it ends, and its slots are then free again.
#[test]
fn a_changed_file_is_a_new_copy_and_running_transfers_keep_the_old() {
    isolated(|| {
        let Some(b) = bench("a_changed_file_is_a_new_copy_and_running_transfers_keep_the_old")
        else {
            return;
        };
        let path = b.root.path.join("boot.efi");
        let old = content(512 * 20, 1);
        std::fs::write(&path, &old).expect("file");
        let names = ["boot.efi".to_owned()];
        assert!(b.kernel.refresh(&b.root.path, &names).is_empty());
        let meta_old = std::fs::metadata(&path).expect("meta");
        let copy = b.kernel.copy_of("boot.efi", &meta_old).expect("hot");
        let t = lock_step(512, old.len() as u64);
        let _reg = b
            .kernel
            .register(key(TID), copy, 512, 1, t.blocks(), 1)
            .expect("register");
        // Replaced on disk (a new inode, as an installer's rename does).
        let new = content(512 * 20, 2);
        let tmp = b.root.path.join("boot.efi.new");
        std::fs::write(&tmp, &new).expect("file");
        std::fs::rename(&tmp, &path).expect("rename");
        // The old opening is no longer the hot copy: refused until the refresh.
        assert!(
            b.kernel.copy_of("boot.efi", &meta_old).is_ok(),
            "the old ident still names the old copy"
        );
        let meta_new = std::fs::metadata(&path).expect("meta");
        assert!(
            b.kernel.copy_of("boot.efi", &meta_new).is_err(),
            "not loaded yet"
        );
        assert!(b.kernel.refresh(&b.root.path, &names).is_empty());
        assert!(b.kernel.copy_of("boot.efi", &meta_new).is_ok());
        // The running transfer still gets the old bytes.
        let (action, frame, _) = b.run(&ack(1, TID, false));
        assert_eq!(action, REDIRECT);
        assert_eq!(frame, userspace_frame(&t, 2, &old, frame[22], false, TID));
    });
}

/// A listed name is opened as a read request would open it: a symlink out of the root, or
/// anything but a regular file, is never copied into the kernel.
#[test]
fn a_listed_name_that_leaves_the_root_is_never_loaded() {
    isolated(|| {
        let Some(b) = bench("a_listed_name_that_leaves_the_root_is_never_loaded") else {
            return;
        };
        let outside = TempDir::new().expect("outside");
        std::fs::write(outside.path.join("secret"), b"not for the network").expect("file");
        std::os::unix::fs::symlink(outside.path.join("secret"), b.root.path.join("out.efi"))
            .expect("symlink");
        std::fs::create_dir(b.root.path.join("dir.efi")).expect("dir");
        std::fs::write(b.root.path.join("ok.efi"), content(4096, 3)).expect("file");
        let names = ["out.efi", "dir.efi", "ok.efi"].map(str::to_owned);
        let problems = b.kernel.refresh(&b.root.path, &names);
        assert_eq!(problems.len(), 2, "{problems:?}");
        let files: Vec<String> = b.kernel.files().into_iter().map(|(n, _)| n).collect();
        assert_eq!(files, ["ok.efi"]);
    });
}
