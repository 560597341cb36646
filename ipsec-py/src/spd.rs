//! `Spd` and the typed, frozen answers of its tools: `Decision`, `Finding`,
//! `FirewallOpening`, `Flow`, `CaseOutcome`, `CaseReport`.

use crate::convert::{self, Bad};
use crate::errors::Failure;
use ipsec_core::spd::selector::{has_ports, is_icmp};
use ipsec_core::spd::{CaseOutcome, CaseReport, Finding, LintBudget, Opening, lint_toml_with};
use ipsec_core::{Decision, Direction, Flow, Spd};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use zeroize::Zeroizing;

/// A Python `repr` of a string: single quotes unless the text holds one and no double
/// quote; backslashes, quotes and control characters escaped.
pub(crate) fn str_repr(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

fn opt_repr<T: core::fmt::Display>(v: &Option<T>, quote: bool) -> String {
    match v {
        None => "None".to_owned(),
        Some(x) if quote => str_repr(&x.to_string()),
        Some(x) => x.to_string(),
    }
}

fn py_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// The answer of a lookup (Python `ipsec.Decision`).
#[pyclass(module = "ipsec", name = "Decision", frozen, eq, hash)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PyDecision {
    /// `"protect"`, `"bypass"` or `"discard"`.
    #[pyo3(get)]
    action: &'static str,
    /// The matching policy's name; `None` for the implicit DISCARD.
    #[pyo3(get)]
    policy: Option<String>,
    /// For PROTECT: the SA of the lookup's direction.
    #[pyo3(get)]
    sa: Option<String>,
    /// The matching policy's position in the file (from 0), or `None`.
    #[pyo3(get)]
    policy_index: Option<usize>,
}

impl From<Decision<'_>> for PyDecision {
    fn from(d: Decision<'_>) -> Self {
        PyDecision {
            action: d.action.name(),
            policy: d.policy.map(str::to_owned),
            sa: d.sa.map(str::to_owned),
            policy_index: d.policy_index,
        }
    }
}

#[pymethods]
impl PyDecision {
    fn __repr__(&self) -> String {
        format!(
            "Decision(action='{}', policy={}, sa={})",
            self.action,
            opt_repr(&self.policy, true),
            opt_repr(&self.sa, true)
        )
    }
}

/// One lint finding (Python `ipsec.Finding`).
#[pyclass(module = "ipsec", name = "Finding", frozen, eq, hash)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PyFinding {
    /// `"error"`, `"warning"` or `"info"`.
    #[pyo3(get)]
    severity: &'static str,
    /// The stable code (`shadowed`, `redundant`, `conflict`, `no-catch-all`, ...).
    #[pyo3(get)]
    code: &'static str,
    /// The policy it is about, or `None` for the file as a whole.
    #[pyo3(get)]
    policy: Option<String>,
    /// One sentence for a person.
    #[pyo3(get)]
    message: String,
    text: String,
}

impl From<Finding> for PyFinding {
    fn from(f: Finding) -> Self {
        PyFinding {
            text: f.to_string(),
            severity: f.severity.name(),
            code: f.code,
            policy: f.policy,
            message: f.message,
        }
    }
}

#[pymethods]
impl PyFinding {
    fn __repr__(&self) -> String {
        format!(
            "Finding(severity='{}', code='{}', policy={}, message={})",
            self.severity,
            self.code,
            opt_repr(&self.policy, true),
            str_repr(&self.message)
        )
    }

    fn __str__(&self) -> &str {
        &self.text
    }
}

/// A hole a firewall between two gateways must have (Python `ipsec.FirewallOpening`).
#[pyclass(module = "ipsec", name = "FirewallOpening", frozen, eq, hash)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PyOpening {
    /// The sending gateway.
    #[pyo3(get)]
    src: String,
    /// The receiving gateway.
    #[pyo3(get)]
    dst: String,
    /// The IP protocol number (17 UDP, 50 ESP, 51 AH).
    #[pyo3(get)]
    protocol: u8,
    /// `"UDP"`, `"ESP"` or `"AH"`.
    #[pyo3(get)]
    protocol_name: &'static str,
    /// The UDP destination port; `None` for ESP and AH (IP protocols, no ports).
    #[pyo3(get)]
    port: Option<u16>,
    /// A short label: `IKE`, `IKE and ESP with NAT-T`, `ESP in UDP`, `ESP`, `AH`.
    #[pyo3(get)]
    label: &'static str,
    /// Why it is needed.
    #[pyo3(get)]
    reason: String,
    text: String,
}

impl From<Opening> for PyOpening {
    fn from(o: Opening) -> Self {
        PyOpening {
            text: o.to_string(),
            label: o.label(),
            src: o.from.to_string(),
            dst: o.to.to_string(),
            protocol: o.protocol,
            protocol_name: o.protocol_name,
            port: o.port,
            reason: o.reason,
        }
    }
}

#[pymethods]
impl PyOpening {
    fn __repr__(&self) -> String {
        format!(
            "FirewallOpening(src='{}', dst='{}', protocol={}, protocol_name='{}', port={}, label='{}')",
            self.src,
            self.dst,
            self.protocol,
            self.protocol_name,
            opt_repr(&self.port, false),
            self.label
        )
    }

    fn __str__(&self) -> &str {
        &self.text
    }
}

/// The selectors of one packet (Python `ipsec.Flow`).
#[pyclass(module = "ipsec", name = "Flow", frozen, eq, hash)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PyFlow {
    /// `"outbound"` or `"inbound"`.
    #[pyo3(get)]
    direction: &'static str,
    /// Source address.
    #[pyo3(get)]
    src: String,
    /// Destination address.
    #[pyo3(get)]
    dst: String,
    /// IP protocol number.
    #[pyo3(get)]
    protocol: u8,
    /// Source port (TCP/UDP/SCTP), or `None`.
    #[pyo3(get)]
    src_port: Option<u16>,
    /// Destination port (TCP/UDP/SCTP), or `None`.
    #[pyo3(get)]
    dst_port: Option<u16>,
    /// ICMP type, or `None`.
    #[pyo3(get)]
    icmp_type: Option<u8>,
    /// ICMP code, or `None`.
    #[pyo3(get)]
    icmp_code: Option<u8>,
}

impl From<&Flow> for PyFlow {
    fn from(f: &Flow) -> Self {
        PyFlow {
            direction: f.direction.name(),
            src: f.src.to_string(),
            dst: f.dst.to_string(),
            protocol: f.protocol,
            src_port: f.src_port,
            dst_port: f.dst_port,
            icmp_type: f.icmp_type,
            icmp_code: f.icmp_code,
        }
    }
}

#[pymethods]
impl PyFlow {
    fn __repr__(&self) -> String {
        format!(
            "Flow(direction='{}', src='{}', dst='{}', protocol={}, src_port={}, dst_port={}, icmp_type={}, icmp_code={})",
            self.direction,
            self.src,
            self.dst,
            self.protocol,
            opt_repr(&self.src_port, false),
            opt_repr(&self.dst_port, false),
            opt_repr(&self.icmp_type, false),
            opt_repr(&self.icmp_code, false),
        )
    }
}

/// The outcome of one policy test case (Python `ipsec.CaseOutcome`).
#[pyclass(module = "ipsec", name = "CaseOutcome", frozen, eq, hash)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PyCaseOutcome {
    /// The case's name, or `case #N`.
    #[pyo3(get)]
    name: String,
    /// True if the decision (and the policy, when the case names one) is as expected.
    #[pyo3(get)]
    passed: bool,
    /// The flow looked up.
    #[pyo3(get)]
    flow: PyFlow,
    /// The expected action.
    #[pyo3(get)]
    expected: &'static str,
    /// The expected policy, or `None`.
    #[pyo3(get)]
    expected_policy: Option<String>,
    /// The action reached.
    #[pyo3(get)]
    action: &'static str,
    /// The policy that matched, or `None` (implicit DISCARD).
    #[pyo3(get)]
    policy: Option<String>,
    /// The SA of the decision, or `None`.
    #[pyo3(get)]
    sa: Option<String>,
    /// One sentence: what happened.
    #[pyo3(get)]
    message: String,
    text: String,
}

impl From<CaseOutcome> for PyCaseOutcome {
    fn from(o: CaseOutcome) -> Self {
        PyCaseOutcome {
            text: o.to_string(),
            flow: PyFlow::from(&o.flow),
            name: o.name,
            passed: o.passed,
            expected: o.expected.name(),
            expected_policy: o.expected_policy,
            action: o.action.name(),
            policy: o.policy,
            sa: o.sa,
            message: o.message,
        }
    }
}

#[pymethods]
impl PyCaseOutcome {
    fn __repr__(&self) -> String {
        format!(
            "CaseOutcome(name={}, passed={}, expected='{}', action='{}', policy={})",
            str_repr(&self.name),
            py_bool(self.passed),
            self.expected,
            self.action,
            opt_repr(&self.policy, true)
        )
    }

    fn __str__(&self) -> &str {
        &self.text
    }
}

/// The result of running a cases file (Python `ipsec.CaseReport`).
#[pyclass(module = "ipsec", name = "CaseReport", frozen)]
pub(crate) struct PyCaseReport {
    /// One outcome per case, in file order.
    #[pyo3(get)]
    outcomes: Vec<PyCaseOutcome>,
    /// How many passed.
    #[pyo3(get)]
    passed: usize,
    /// How many failed.
    #[pyo3(get)]
    failed: usize,
    /// True if every case passed.
    #[pyo3(get)]
    all_passed: bool,
    text: String,
}

impl From<CaseReport> for PyCaseReport {
    fn from(r: CaseReport) -> Self {
        PyCaseReport {
            text: r.to_string(),
            passed: r.passed(),
            failed: r.failed(),
            all_passed: r.all_passed(),
            outcomes: r.outcomes.into_iter().map(PyCaseOutcome::from).collect(),
        }
    }
}

#[pymethods]
impl PyCaseReport {
    fn __repr__(&self) -> String {
        format!("CaseReport(passed={}, failed={})", self.passed, self.failed)
    }

    fn __str__(&self) -> &str {
        &self.text
    }

    fn __len__(&self) -> usize {
        self.outcomes.len()
    }
}

/// Reads a policy, SA or cases file into memory that is wiped when dropped; a read
/// failure is a `ConfigError` naming the path (as the core's `Spd::load` reports it).
pub(crate) fn read_file(path: &std::path::Path) -> PyResult<Zeroizing<String>> {
    ipsec_core::secret::read_file(path)
        .map_err(|e| crate::errors::config("path", format!("{}: {e}", path.display())))
}

fn direction(obj: &Bound<'_, PyAny>) -> PyResult<Direction> {
    let text = convert::text(obj, "direction")?;
    Ok(Direction::from_name(&text).map_err(Failure::from)?)
}

/// A security policy database (Python `ipsec.Spd`), immutable once loaded.
///
/// The core `Spd` is `Send + Sync` and never mutated after loading, so Python threads
/// share it without a lock.
#[pyclass(module = "ipsec", name = "Spd", frozen)]
///
/// It keeps the parsed policies and SA configurations (keys wiped when dropped), never
/// the file's text: `ipsec.Gateway(spd)` gets a copy of the core `Spd` (a gateway owns
/// its SPD and takes the SA configurations out of it).
pub(crate) struct PySpd {
    spd: Spd,
}

impl PySpd {
    /// Parses a policy file's text.
    pub(crate) fn from_text(text: &str) -> PyResult<Self> {
        let spd = Spd::from_toml(text).map_err(Failure::from)?;
        Ok(PySpd { spd })
    }

    /// Wraps a core SPD (the live policies of a gateway).
    pub(crate) fn from_core(spd: Spd) -> Self {
        PySpd { spd }
    }

    /// The core SPD.
    pub(crate) fn core(&self) -> &Spd {
        &self.spd
    }

    fn run_cases_text(&self, text: &str) -> PyResult<PyCaseReport> {
        Ok(self.spd.run_cases(text).map_err(Failure::from)?.into())
    }
}

#[pymethods]
impl PySpd {
    /// Parses a policy file's text.
    #[staticmethod]
    fn from_toml(text: &Bound<'_, PyAny>) -> PyResult<Self> {
        PySpd::from_text(&convert::secret_text(text, "text")?)
    }

    /// Reads and parses a policy file.
    #[staticmethod]
    fn load(path: &Bound<'_, PyAny>) -> PyResult<Self> {
        PySpd::from_text(&read_file(&convert::path(path, "path")?)?)
    }

    /// The first policy matching the flow (DISCARD with no policy if none does).
    #[pyo3(signature = (direction, src, dst, protocol, src_port=None, dst_port=None, *, icmp_type=None, icmp_code=None))]
    #[allow(clippy::too_many_arguments)]
    fn lookup(
        &self,
        direction: &Bound<'_, PyAny>,
        src: &Bound<'_, PyAny>,
        dst: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        src_port: Option<&Bound<'_, PyAny>>,
        dst_port: Option<&Bound<'_, PyAny>>,
        icmp_type: Option<&Bound<'_, PyAny>>,
        icmp_code: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyDecision> {
        let dir = self::direction(direction)?;
        let src = convert::addr(src, "src", Bad::Value)?;
        let dst = convert::addr(dst, "dst", Bad::Value)?;
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(PyValueError::new_err(format!(
                "src {src} and dst {dst} are of different address families"
            )));
        }
        let protocol = convert::protocol(protocol)?;
        let mut flow = Flow::new(dir, src, dst, protocol);
        let sport = convert::opt_int::<u16>(src_port, "src_port", Bad::Value)?;
        let dport = convert::opt_int::<u16>(dst_port, "dst_port", Bad::Value)?;
        let itype = convert::opt_int::<u8>(icmp_type, "icmp_type", Bad::Value)?;
        let icode = convert::opt_int::<u8>(icmp_code, "icmp_code", Bad::Value)?;
        if (sport.is_some() || dport.is_some()) && !has_ports(protocol) {
            return Err(PyValueError::new_err(format!(
                "protocol {protocol} has no ports: leave src_port and dst_port out"
            )));
        }
        if (itype.is_some() || icode.is_some()) && !is_icmp(protocol) {
            return Err(PyValueError::new_err(format!(
                "icmp_type and icmp_code are for ICMP and ICMPv6, not protocol {protocol}"
            )));
        }
        flow.src_port = sport;
        flow.dst_port = dport;
        flow.icmp_type = itype;
        flow.icmp_code = icode;
        Ok(self.spd.lookup(&flow).into())
    }

    /// Reads the selectors of an IP packet and looks them up; fragments are answered as
    /// the gateway answers them without fragment state (`FragmentError` for a tiny or
    /// overlapping fragment, or a non-first fragment a port-specific policy may cover).
    fn lookup_packet(
        &self,
        direction: &Bound<'_, PyAny>,
        packet: &Bound<'_, PyAny>,
    ) -> PyResult<PyDecision> {
        let dir = self::direction(direction)?;
        let packet = convert::bytes(packet, "packet")?;
        Ok(self
            .spd
            .lookup_packet(dir, packet)
            .map_err(Failure::from)?
            .into())
    }

    /// The lint findings (shadowed, redundant and conflicting rules, missing
    /// catch-all, IKE blocked, ...), within a work `budget` of steps (default 400
    /// million): past it the analyses that compare policies stop with a `budget`
    /// finding. The GIL is released while it runs.
    #[pyo3(signature = (*, budget=None))]
    fn lint(&self, py: Python<'_>, budget: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<PyFinding>> {
        let budget = lint_budget(budget)?;
        let findings = py.detach(|| self.spd.lint_with(budget));
        Ok(findings.into_iter().map(PyFinding::from).collect())
    }

    /// What a firewall between the gateways must let through for IPsec to work.
    fn firewall_openings(&self) -> PyResult<Vec<PyOpening>> {
        Ok(self
            .spd
            .firewall_openings()
            .into_iter()
            .map(PyOpening::from)
            .collect())
    }

    /// Runs the `[[case]]` tables of a cases file's text against this policy.
    fn run_cases(&self, text: &Bound<'_, PyAny>) -> PyResult<PyCaseReport> {
        let text = convert::text(text, "text")?;
        self.run_cases_text(&text)
    }

    /// Reads a cases file and runs it against this policy.
    fn run_cases_file(&self, path: &Bound<'_, PyAny>) -> PyResult<PyCaseReport> {
        self.run_cases_text(&read_file(&convert::path(path, "path")?)?)
    }

    /// The policy names, in file order.
    #[getter]
    fn policy_names(&self) -> PyResult<Vec<String>> {
        Ok(self
            .spd
            .policies()
            .iter()
            .map(|p| p.name().to_owned())
            .collect())
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.spd.policies().len())
    }

    fn __repr__(&self) -> PyResult<String> {
        let spd = &self.spd;
        Ok(format!(
            "Spd(policies={}, sas={})",
            spd.policies().len(),
            spd.sas().len()
        ))
    }
}

/// Lints a policy file's text: every load error as an `invalid` finding, or, when the
/// file loads, the findings of `Spd.lint()` (within `budget`, as there). The GIL is
/// released while it runs.
#[pyfunction(name = "lint_toml")]
#[pyo3(signature = (text, *, budget=None))]
pub(crate) fn py_lint_toml(
    py: Python<'_>,
    text: &Bound<'_, PyAny>,
    budget: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<PyFinding>> {
    let text = convert::secret_text(text, "text")?;
    let budget = lint_budget(budget)?;
    let text: &str = &text;
    let findings = py.detach(|| lint_toml_with(text, budget));
    Ok(findings.into_iter().map(PyFinding::from).collect())
}

/// The `budget` keyword of the lint calls (`None`: the default).
fn lint_budget(budget: Option<&Bound<'_, PyAny>>) -> PyResult<LintBudget> {
    Ok(
        match convert::opt_int::<u64>(budget, "budget", convert::Bad::Value)? {
            Some(steps) => LintBudget::with_total(steps),
            None => LintBudget::DEFAULT,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::str_repr;

    #[test]
    fn str_repr_quotes_like_python() {
        assert_eq!(str_repr("abc"), "'abc'");
        assert_eq!(str_repr("it's"), "\"it's\"");
        assert_eq!(str_repr("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(str_repr("x\ny\\"), "'x\\ny\\\\'");
        assert_eq!(str_repr("\u{1}"), "'\\x01'");
    }
}
