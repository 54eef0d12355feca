//! The label enums of the metrics (every label value is one of these: none comes from the
//! network, so the cardinality is fixed).

use std::fmt;

macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident : $label:literal {
            $( $(#[$vmeta:meta])* $var:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $var, )+
        }

        impl $name {
            /// Every value, in the order they are encoded.
            pub const ALL: &'static [$name] = &[$($name::$var,)+];
            /// How many values there are.
            pub const COUNT: usize = Self::ALL.len();
            /// The Prometheus label name.
            pub const LABEL: &'static str = $label;

            /// The label value (snake_case, stable: dashboards depend on it).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$var => $text, )+
                }
            }

            pub(super) fn index(self) -> usize {
                self as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_enum! {
    /// How a unicast TFTP transfer ended (label `outcome`). One value per variant of the
    /// transfer machine's `Outcome`.
    pub enum Outcome: "outcome" {
        /// The client acknowledged the last block.
        Completed => "completed",
        /// Every block was sent and the client then left without its final ACK reaching the
        /// server (lost, or crossed by a tail probe): a completed download, not confirmed.
        Unconfirmed => "completed_unconfirmed",
        /// The client ended the transfer after the OACK: the firmware size probe (not a failure).
        Probe => "probe",
        /// The client sent an ERROR during the transfer.
        ClientError => "client_error",
        /// The client went silent for the whole retry budget.
        Timeout => "timeout",
        /// The client sent a packet that has no place in a read transfer.
        ProtocolViolation => "protocol_violation",
        /// The server ended it (file changed, shutdown, port unreachable, MTU).
        Aborted => "aborted",
        /// The client never acknowledged the first response (gone, or a spoofed address).
        Unanswered => "unanswered",
    }
}

label_enum! {
    /// Why a TFTP request was refused with an ERROR (label `reason`).
    pub enum RefuseReason: "reason" {
        /// The file does not exist under the root.
        NotFound => "not_found",
        /// The name is unusable: illegal character, `..`, a drive letter, empty.
        BadName => "bad_name",
        /// The path leads outside the root, through a forbidden link, to an unreadable file or to
        /// something that is not a regular file.
        Forbidden => "forbidden",
        /// The file keeps changing while being read.
        FileBusy => "file_busy",
        /// Reading the file failed.
        ReadError => "read_error",
        /// A write request (the server is read-only).
        WriteRequest => "write_request",
        /// A mode the server does not serve (mail).
        UnsupportedMode => "unsupported_mode",
        /// A request that does not parse, or is too large.
        Malformed => "malformed",
        /// The worker's share of the transfer cap is in use.
        ServerBusy => "server_busy",
        /// The client's address holds its cap of transfers.
        ClientBusy => "client_busy",
        /// The client's address is over its rate of new transfers.
        ClientRate => "client_rate",
        /// No transfer socket could be opened (no free port, no descriptor).
        NoSocket => "no_socket",
    }
}

label_enum! {
    /// A DHCP message type (label `type`), received (DISCOVER, REQUEST, ...) or sent (OFFER,
    /// ACK, NAK).
    pub enum DhcpType: "type" {
        Discover => "discover",
        Offer => "offer",
        Request => "request",
        Decline => "decline",
        Ack => "ack",
        Nak => "nak",
        Release => "release",
        Inform => "inform",
        /// Any other option 53 value.
        Other => "other",
    }
}

label_enum! {
    /// The DHCP responder's mode (label `mode`); `off` sends and counts nothing.
    pub enum DhcpMode: "mode" {
        Proxy => "proxy",
        Full => "full",
    }
}

label_enum! {
    /// The client's architecture class from DHCP option 93 (label `arch`, RFC 4578 section 2.1).
    /// Unknown numbers are `other`, a missing option is `none`: the label set stays bounded.
    pub enum ArchClass: "arch" {
        Bios => "bios",
        EfiIa32 => "efi_ia32",
        /// Option 93 values 7 and 9 (the old "EFI BC" number that x64 firmware sends).
        EfiX64 => "efi_x64",
        EfiArm32 => "efi_arm32",
        EfiArm64 => "efi_arm64",
        HttpIa32 => "http_ia32",
        HttpX64 => "http_x64",
        HttpArm32 => "http_arm32",
        HttpArm64 => "http_arm64",
        /// A value outside the classes above.
        Other => "other",
        /// No option 93 in the request.
        None => "none",
    }
}

impl ArchClass {
    /// The class of an option 93 value (`None`: the option is absent).
    pub fn from_option93(arch: Option<u16>) -> ArchClass {
        match arch {
            None => ArchClass::None,
            Some(0) => ArchClass::Bios,
            Some(6) => ArchClass::EfiIa32,
            Some(7 | 9) => ArchClass::EfiX64,
            Some(10) => ArchClass::EfiArm32,
            Some(11) => ArchClass::EfiArm64,
            Some(15) => ArchClass::HttpIa32,
            Some(16) => ArchClass::HttpX64,
            Some(18) => ArchClass::HttpArm32,
            Some(19) => ArchClass::HttpArm64,
            Some(_) => ArchClass::Other,
        }
    }
}

label_enum! {
    /// Why a DHCP message got no answer (label `reason`).
    pub enum DhcpIgnored: "reason" {
        /// It does not parse.
        Malformed => "malformed",
        /// Over a per-client or per-segment rate.
        RateLimited => "rate_limited",
        /// Proxy mode: not a PXE client.
        NotPxe => "not_pxe",
        /// Addressed to another server, or no rule matched.
        NotForUs => "not_for_us",
        /// Full mode: no free address.
        PoolExhausted => "pool_exhausted",
        Other => "other",
    }
}

label_enum! {
    /// The multicast protocol of a session (label `protocol`).
    pub enum McProtocol: "protocol" {
        /// PXE MTFTP (fixed group, port 1758/1759).
        PxeMtftp => "pxe_mtftp",
        /// RFC 2090 (the `multicast` option).
        Rfc2090 => "rfc2090",
    }
}

label_enum! {
    /// Why a request for multicast was not served by multicast (label `reason`): RFC 2090
    /// requests are then served by unicast; PXE MTFTP opens get an ERROR.
    pub enum McRefusal: "reason" {
        Disabled => "disabled",
        BlockSize => "block_size",
        PoolFull => "pool_full",
        SessionFull => "session_full",
        SourceCap => "source_cap",
        Saturated => "saturated",
        /// PXE MTFTP: the file is not served (not found, forbidden).
        NotFound => "not_found",
        /// PXE MTFTP: the file has no MTFTP settings (not in the `--mtftp` list).
        NoMtftp => "no_mtftp",
        /// RFC 2090: a late joiner of a session past 65535 blocks (served by unicast).
        Late => "late",
        /// RFC 2090: an address sent away from a session as too slow (served by unicast).
        Slow => "slow",
    }
}
