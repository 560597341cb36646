//! Firewall openings ([`Spd::firewall_openings`]): what a firewall between the
//! gateways must let through for IPsec to work.

use crate::spd::Spd;
use crate::spd::lint::EspCarrier;
use core::fmt;
use std::net::IpAddr;

/// IP protocol number of UDP.
const UDP: u8 = 17;
/// IP protocol number of ESP.
const ESP: u8 = 50;
/// IP protocol number of AH.
const AH: u8 = 51;

/// One hole a firewall between two gateways must have.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Opening {
    /// The sending gateway.
    pub from: IpAddr,
    /// The receiving gateway.
    pub to: IpAddr,
    /// The IP protocol number (17 UDP, 50 ESP, 51 AH).
    pub protocol: u8,
    /// `"UDP"`, `"ESP"` or `"AH"`.
    pub protocol_name: &'static str,
    /// The destination port for UDP; `None` for ESP and AH, which are IP protocols and
    /// have no ports.
    pub port: Option<u16>,
    /// Why it is needed (which SAs, IKE or NAT-T).
    pub reason: String,
}

impl Opening {
    /// A short label: `IKE`, `NAT-T`, `ESP in UDP`, `ESP`, `AH`.
    pub fn label(&self) -> &'static str {
        match (self.protocol, self.port) {
            (ESP, _) => "ESP",
            (AH, _) => "AH",
            (_, Some(500)) => "IKE",
            (_, Some(4500)) => "IKE and ESP with NAT-T",
            _ => "ESP in UDP",
        }
    }
}

impl fmt::Display for Opening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}  ", self.from, self.to)?;
        match self.port {
            Some(port) => write!(
                f,
                "{}/{port} ({})",
                self.protocol_name.to_ascii_lowercase(),
                self.label()
            ),
            None => write!(
                f,
                "IP protocol {} ({})  (not a TCP/UDP port)",
                self.protocol,
                self.label()
            ),
        }
    }
}

/// Whether an SA uses AH. Always false today: this data plane only implements ESP.
/// The code path that opens IP protocol 51 is kept for when AH SAs exist.
const fn uses_ah(_sa: &crate::sa::SaConfig) -> bool {
    false
}

impl Spd {
    /// What a firewall between each pair of gateways (the SAs' tunnel endpoints; an
    /// inbound SA without endpoints takes its outbound partner's, swapped) must let
    /// through: UDP 500 (IKE) both ways; UDP 4500 both ways when an SA of the pair uses
    /// NAT-T; IP protocol 50 (ESP) in each direction that has an SA, or, for an SA with
    /// UDP encapsulation, its UDP destination port instead; IP protocol 51 only for AH
    /// SAs (none today: only ESP is implemented). Transport-mode SAs (no tunnel
    /// endpoints, no partner) are not included.
    ///
    /// Deduplicated (reasons merged); ordered by gateway pair, then IKE, NAT-T, ESP.
    pub fn firewall_openings(&self) -> Vec<Opening> {
        let mut out: Vec<Opening> = Vec::new();
        let mut push = |o: Opening| {
            if let Some(e) = out
                .iter_mut()
                .find(|e| (e.from, e.to, e.protocol, e.port) == (o.from, o.to, o.protocol, o.port))
            {
                e.reason = format!("{}; {}", e.reason, o.reason);
            } else {
                out.push(o);
            }
        };
        let open = |from, to, protocol, port, reason: String| Opening {
            from,
            to,
            protocol,
            protocol_name: match protocol {
                ESP => "ESP",
                AH => "AH",
                _ => "UDP",
            },
            port,
            reason,
        };
        for ((local, remote), pair) in self.gateway_pairs() {
            let list = pair.sas.join(", ");
            for (a, b) in [(local, remote), (remote, local)] {
                push(open(
                    a,
                    b,
                    UDP,
                    Some(500),
                    format!("IKE (key exchange and rekeying) for SAs {list}"),
                ));
            }
            if pair.nat_t {
                for (a, b) in [(local, remote), (remote, local)] {
                    push(open(
                        a,
                        b,
                        UDP,
                        Some(4500),
                        "NAT traversal (RFC 3948): IKE moves to UDP 4500".into(),
                    ));
                }
            }
            for (sas, a, b) in [
                (&pair.outbound, local, remote),
                (&pair.inbound, remote, local),
            ] {
                for (name, carrier) in sas {
                    let o = match carrier {
                        EspCarrier::Esp => open(
                            a,
                            b,
                            ESP,
                            None,
                            format!("ESP of SA {name:?} (IP protocol 50, not a port)"),
                        ),
                        EspCarrier::Udp(port) => open(
                            a,
                            b,
                            UDP,
                            Some(*port),
                            format!(
                                "ESP of SA {name:?} travels inside UDP (NAT-T, RFC 3948), \
                                 so IP protocol 50 is not needed for it"
                            ),
                        ),
                    };
                    push(o);
                    let ah = self
                        .sas
                        .iter()
                        .find(|s| &s.name == name)
                        .is_some_and(|s| uses_ah(&s.config));
                    if ah {
                        push(open(
                            a,
                            b,
                            AH,
                            None,
                            format!("AH of SA {name:?} (IP protocol 51, not a port)"),
                        ));
                    }
                }
            }
        }
        out
    }
}
