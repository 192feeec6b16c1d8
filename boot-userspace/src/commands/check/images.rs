//! `check` for `[images]`: every stored version's files are there and hash to what the record
//! says, and the sums file and signature it was verified with verify again, with the keys the
//! config names now (a key removed from the config is a version no longer trusted).

use super::Item;
use crate::{
    config::{
        images::{ImageConfig, Source},
        Config,
    },
    model::images::{
        verify::{Digest, Sums},
        Store, Version,
    },
};

/// One item per image and version.
pub fn images(config: &Config, checksums: bool) -> Vec<Item> {
    let Some(store) = config.image_store() else {
        return Vec::new();
    };
    let mut items = Vec::new();
    for image in &config.images {
        let subject = format!("image {}", image.name);
        if image.sums.is_empty() {
            items.push(Item::warn(
                &subject,
                "no sums file: its bytes are taken as they arrive",
                format!("give images.{}.sums (and a signature and keys)", image.name),
            ));
        }
        let state = match store.read(&image.name) {
            Ok(s) => s,
            Err(e) => {
                items.push(Item::fail(&subject, e.to_string(), "see the reason"));
                continue;
            }
        };
        if state.versions.is_empty() {
            items.push(Item::warn(
                &subject,
                "no version stored yet",
                format!("bootfabric image add {}", image.name),
            ));
        }
        if let Some(a) = state.last_attempt.as_ref().filter(|a| !a.ok) {
            items.push(Item::warn(
                &subject,
                format!("the last update failed: {}", a.message),
                format!(
                    "bootfabric image ls {0}; bootfabric image update {0} when the cause is fixed",
                    image.name
                ),
            ));
        }
        for v in &state.versions {
            let current = state.current.as_deref() == Some(v.id.as_str());
            let subject = format!(
                "image {} version {}{}",
                image.name,
                v.id,
                if current { " (current)" } else { "" }
            );
            items.push(match version(image, &store, v, checksums) {
                Ok(detail) => Item::pass(subject, detail),
                Err(why) => Item::fail(
                    subject,
                    why,
                    if current {
                        format!(
                            "bootfabric image rollback {0}, or bootfabric image update {0}",
                            image.name
                        )
                    } else {
                        format!("bootfabric image rm {} --version {}", image.name, v.id)
                    },
                ),
            });
        }
    }
    items
}

/// What verifies of one version, or the first thing that does not.
fn version(
    image: &ImageConfig,
    store: &Store,
    v: &Version,
    checksums: bool,
) -> Result<String, String> {
    let dir = store.version_dir(&image.name, &v.id);
    for f in v.files() {
        let path = dir.join(&f.name);
        let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.len() != f.size {
            return Err(format!(
                "{}: {} bytes, the record says {}",
                path.display(),
                meta.len(),
                f.size
            ));
        }
        if checksums {
            let got = std::fs::File::open(&path)
                .and_then(|f| super::local::sha256_of(&f))
                .map(|d| d.iter().map(|b| format!("{b:02x}")).collect::<String>())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if got != f.sha256 {
                return Err(format!(
                    "{}: SHA-256 {got}, the record says {}",
                    path.display(),
                    f.sha256
                ));
            }
        }
    }
    let mut detail = format!(
        "{} file(s){}",
        v.files().count(),
        if checksums {
            ", SHA-256 match the record"
        } else {
            ""
        }
    );
    if image.sums.is_empty() {
        return Ok(detail);
    }
    let evidence = store.evidence_dir(&image.name, &v.id);
    let keys = image.keys.as_ref().map(|k| &k.0);
    let mut all = Vec::new();
    let mut signers = std::collections::BTreeSet::new();
    for i in 0..image.sums.len() {
        let path = evidence.join(format!("sums.{i}"));
        let raw = std::fs::read(&path).map_err(|e| {
            format!(
                "the sums file it was verified with ({}): {e}",
                path.display()
            )
        })?;
        let text = match keys {
            Some(keys) => {
                let (text, signer) = match std::fs::read(evidence.join(format!("signature.{i}"))) {
                    Ok(sig) => keys
                        .verify_detached(&raw, &sig)
                        .map(|s| (String::from_utf8_lossy(&raw).into_owned(), s)),
                    Err(_) => keys.verify_cleartext(&raw),
                }
                .map_err(|e| {
                    format!(
                        "the signature of {} does not verify with the configured keys: {e}",
                        image.sums[i].text
                    )
                })?;
                signers.insert(signer);
                text
            }
            None => String::from_utf8_lossy(&raw).into_owned(),
        };
        all.push(Sums::parse(&text).map_err(|e| format!("{}: {e}", image.sums[i].text))?);
    }
    if !signers.is_empty() {
        let list: Vec<String> = signers.into_iter().collect();
        detail.push_str(&format!(", signature by {} verifies", list.join(",")));
    }
    // A sums file listing only SHA-512 was checked by the update itself; the record keeps
    // SHA-256, checked against the file above.
    let listed = |name: &str, sha256: &str| {
        all.iter().any(|sums| {
            let found = sums.lookup(name);
            found
                .iter()
                .any(|d| matches!(d, Digest::Sha256(_)) && d.hex() == sha256)
                || (!found.is_empty() && found.iter().all(|d| matches!(d, Digest::Sha512(_))))
        })
    };
    match &image.source {
        Source::Files { .. } => {
            for f in v.files() {
                if !listed(&f.name, &f.sha256) {
                    return Err(format!("the sums file does not list {} as stored", f.name));
                }
            }
        }
        Source::Iso { iso, .. } => {
            let name = iso.file_name();
            if let Some(d) = &v.iso_sha256 {
                if !listed(&name, d) {
                    return Err(format!("the sums file does not list {name} as fetched"));
                }
            }
        }
    }
    detail.push_str(", listed in its sums file");
    Ok(detail)
}
