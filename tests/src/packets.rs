//! Hand-built client packets for lab tests and the demo, shaped like what firmware sends.

/// A BOOTREQUEST DHCPDISCOVER as a PXE ROM sends it (300 bytes, broadcast flag set, vendor
/// class `PXEClient`), from `mac`.
pub fn dhcp_discover(xid: u32, mac: [u8; 6]) -> Vec<u8> {
    let mut p = vec![0u8; 300];
    p[0] = 1; // op BOOTREQUEST
    p[1] = 1; // htype Ethernet
    p[2] = 6; // hlen
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast flag
    p[28..34].copy_from_slice(&mac);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]); // magic cookie
    p[240..243].copy_from_slice(&[53, 1, 1]); // DHCPDISCOVER
    p[243] = 60;
    p[244] = 9;
    p[245..254].copy_from_slice(b"PXEClient");
    p[254] = 255;
    p
}

/// A TFTP RRQ for `file` in octet mode asking for `blksize 1468`.
pub fn tftp_rrq(file: &str) -> Vec<u8> {
    let mut p = vec![0, 1];
    p.extend_from_slice(file.as_bytes());
    p.push(0);
    p.extend_from_slice(b"octet\0blksize\x001468\0");
    p
}

/// A TFTP ACK of `block`.
pub fn tftp_ack(block: u16) -> Vec<u8> {
    let b = block.to_be_bytes();
    vec![0, 4, b[0], b[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_is_well_formed() {
        let p = dhcp_discover(7, [2, 0, 0, 0, 0, 1]);
        assert_eq!(p.len(), 300);
        assert_eq!(&p[236..240], &[99, 130, 83, 99]);
        assert_eq!(&p[245..254], b"PXEClient");
        assert_eq!(p[254], 255);
    }

    #[test]
    fn rrq_has_its_fields_nul_terminated() {
        let p = tftp_rrq("ipxe.efi");
        let fields: Vec<&[u8]> = p[2..].split(|b| *b == 0).collect();
        assert_eq!(
            fields,
            [&b"ipxe.efi"[..], b"octet", b"blksize", b"1468", b""]
        );
    }
}
