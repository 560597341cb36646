//! The `protocol-number-as-port` check: ESP and AH are IP protocols 50 and 51, and a
//! TCP or UDP port selector that holds 50 or 51 is almost always the classic mistake
//! "open ports 50 and 51 for IPsec".

use super::{Finding, Severity};
use crate::spd::Policy;
use crate::spd::selector::protocol_name;

/// The widest port range (in ports) that is still flagged when it holds 50 or 51:
/// `"50-51"`, `"49-52"` or `"50-60"` are that mistake; a range as wide as `"1-1023"`
/// (the well-known ports) or `"0-100"` is a deliberate selection that merely contains
/// them.
pub const MAX_FLAGGED_RANGE: u32 = 16;

/// The `protocol-number-as-port` findings of `p` (TCP or UDP only): one per port key
/// (`local_port`, `remote_port`) whose port or range of at most [`MAX_FLAGGED_RANGE`]
/// ports holds 50 or 51.
pub(super) fn protocol_number_as_port(p: &Policy) -> Vec<Finding> {
    if !p.protocol.is_some_and(|x| x == 6 || x == 17) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (key, range) in [("local_port", p.local_port), ("remote_port", p.remote_port)] {
        let Some((lo, hi)) = range else { continue };
        let width = u32::from(hi) - u32::from(lo) + 1;
        let holds: Vec<u16> = [50u16, 51]
            .into_iter()
            .filter(|x| (lo..=hi).contains(x))
            .collect();
        if holds.is_empty() || width > MAX_FLAGGED_RANGE {
            continue;
        }
        let value = if lo == hi {
            lo.to_string()
        } else {
            format!("\"{lo}-{hi}\"")
        };
        let which = match holds.as_slice() {
            [50, 51] => "50 and 51",
            [50] => "50",
            _ => "51",
        };
        out.push(Finding::new(
            Severity::Warning,
            "protocol-number-as-port",
            Some(&p.name),
            format!(
                "{key} = {value} (port {which}) with protocol {}: ESP and AH are IP protocols \
                 50 and 51, not ports; to match ESP write protocol = \"esp\" (or 50) without \
                 ports",
                protocol_name(p.protocol)
            ),
        ));
    }
    out
}
