//! Certificates for lab tests, made by openssl: a CA and certificates it signs.

use std::{path::Path, process::Command};

use crate::{run, LabError};

/// One certificate to issue: written to `<name>.pem` and `<name>.key`.
pub struct Leaf<'a> {
    /// File name stem.
    pub name: &'a str,
    /// Subject common name.
    pub cn: &'a str,
    /// openssl extension lines (`subjectAltName = IP:10.77.0.1`).
    pub ext: &'a str,
}

/// A CA (`ca.pem`, `ca.key`) in `dir` if there is none yet, and every leaf signed by it.
/// P-256 keys, two days of validity.
pub fn issue(dir: &Path, leaves: &[Leaf<'_>]) -> Result<(), LabError> {
    issue_with(dir, leaves, &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
}

/// As [`issue`], with RSA 2048 keys throughout: what EDK2 firmware (OVMF) verifies, its TLS
/// having no elliptic curves.
pub fn issue_rsa(dir: &Path, leaves: &[Leaf<'_>]) -> Result<(), LabError> {
    issue_with(dir, leaves, &["rsa:2048"])
}

fn issue_with(dir: &Path, leaves: &[Leaf<'_>], newkey: &[&str]) -> Result<(), LabError> {
    let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(dir).args(args));
    let mut key = vec!["-newkey"];
    key.extend(newkey);
    key.push("-nodes");
    if !dir.join("ca.pem").exists() {
        let mut args = vec!["req", "-x509"];
        args.extend(&key);
        args.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=bootfabric-lab-ca",
        ]);
        openssl(&args)?;
    }
    for leaf in leaves {
        let (keyfile, csr, pem, ext, subj) = (
            format!("{}.key", leaf.name),
            format!("{}.csr", leaf.name),
            format!("{}.pem", leaf.name),
            format!("{}.ext", leaf.name),
            format!("/CN={}", leaf.cn),
        );
        std::fs::write(dir.join(&ext), format!("{}\n", leaf.ext))
            .map_err(|e| format!("{ext}: {e}"))?;
        let mut args = vec!["req", "-new"];
        args.extend(&key);
        args.extend(["-keyout", &keyfile, "-out", &csr, "-subj", &subj]);
        openssl(&args)?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ])?;
    }
    Ok(())
}
