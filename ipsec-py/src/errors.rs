//! The exception hierarchy and the one conversion of `ipsec_core` errors to `PyErr`.
//!
//! ```text
//! IpsecError(Exception)            .reason: the drop counter the failure was counted
//!  +- AuthenticationError                   under ("auth_failed", ...), or None
//!  +- ReplayError                  .index: position in an encrypt_many batch, or None
//!  +- MalformedPacketError
//!  +- UnknownSpiError
//!  +- PolicyMismatchError
//!  +- LifetimeExpiredError
//!  +- SequenceOverflowError
//!  +- WrongDirectionError
//!  +- PacketTooBigError            .mtu: the largest inner packet that fits
//!  +- FragmentError
//!  +- SpiExhaustedError            no free SPI (`Gateway.allocate_spi`)
//!  +- ConfigError(IpsecError, ValueError)   .field: the keyword or TOML key, or None
//!  |                                        .context: where the key is (`sa "b1-out"`), or None
//!  +- ControlError                 a refused control call of a live Gateway (nothing changed)
//!      +- DuplicateNameError       .name
//!      +- DuplicateSpiError        .spi, .sa
//!      +- UnknownSaError           .name
//!      +- SaInUseError             .sa, .policy
//!      +- MissingSaError           .policy, .sa
//!      +- DirectionMismatchError   .sa, .replaces
//!      +- DuplicatePolicyError     .name
//!      +- UnknownPolicyError       .name
//!      +- StalePoliciesError       `commit_policies`: the policies changed since the edit
//! ```
//!
//! A control call refused for an invalid SA configuration or policy text
//! (`ControlError::Config` of the core) raises `ConfigError`, as the same mistake does
//! anywhere else; every other refusal is a `ControlError` subclass named after the
//! core's variant, with the variant's fields as attributes and its `Display` text as
//! the message.
//!
//! `ConfigError` derives from two bases, which `create_exception!` cannot express; it is
//! made once with `type(name, bases, namespace)` and kept in a [`PyOnceLock`].

use ipsec_core::{
    ConfigError as CoreConfigError, ControlError as CoreControlError, Error, SpiError,
};
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

pyo3::create_exception!(
    ipsec,
    IpsecError,
    PyException,
    "Base class of every error raised by the ipsec package."
);
pyo3::create_exception!(
    ipsec,
    AuthenticationError,
    IpsecError,
    "The integrity check value did not verify: the packet was altered or the key is wrong."
);
pyo3::create_exception!(
    ipsec,
    ReplayError,
    IpsecError,
    "The sequence number was already received, or lies below the replay window."
);
pyo3::create_exception!(
    ipsec,
    MalformedPacketError,
    IpsecError,
    "The packet could not be parsed (truncated, bad lengths, not ESP, bad padding ...)."
);
pyo3::create_exception!(
    ipsec,
    UnknownSpiError,
    IpsecError,
    "The packet's SPI is not the SA's."
);
pyo3::create_exception!(
    ipsec,
    PolicyMismatchError,
    IpsecError,
    "The decapsulated packet does not match the selectors of the SA's policy."
);
pyo3::create_exception!(
    ipsec,
    LifetimeExpiredError,
    IpsecError,
    "A hard lifetime (bytes, packets or time) was reached; the SA refuses packets."
);
pyo3::create_exception!(
    ipsec,
    SequenceOverflowError,
    IpsecError,
    "The outbound sequence number space is exhausted; the SA must be replaced."
);

pyo3::create_exception!(
    ipsec,
    WrongDirectionError,
    IpsecError,
    "Encrypt on an inbound SA or decrypt on an outbound one."
);
pyo3::create_exception!(
    ipsec,
    PacketTooBigError,
    IpsecError,
    "The packet does not fit the SA's path MTU after ESP and may not be fragmented \
     (IPv4 with DF set, or IPv6). `.mtu` is the largest inner packet that fits; \
     `ipsec.too_big_reply` builds the ICMP error for its sender."
);
pyo3::create_exception!(
    ipsec,
    FragmentError,
    IpsecError,
    "A fragment was dropped: overlapping, duplicate, invalid, timed out, over a \
     reassembly limit, a first fragment too short for the ports, or a non-first \
     fragment whose policy cannot be decided. `.reason` says which."
);

pyo3::create_exception!(
    ipsec,
    SpiExhaustedError,
    IpsecError,
    "No SPI is free: every SPI of the gateway's SPI range is in use or reserved."
);

pyo3::create_exception!(
    ipsec,
    ControlError,
    IpsecError,
    "A control call of a live Gateway (add_sa, rekey_sa, delete_sa, retire_sa, \
     install_policy, replace_policy, remove_policy, commit_policies, or a change to a \
     PolicyEdit) was refused; the gateway (or the edit) is \
     unchanged. The subclasses say why and carry the names involved as attributes."
);
pyo3::create_exception!(
    ipsec,
    DuplicateNameError,
    ControlError,
    "The SA name is taken (by an installed SA, or lent by a rekeyed SA to its \
     successor). `.name`: the name."
);
pyo3::create_exception!(
    ipsec,
    DuplicateSpiError,
    ControlError,
    "An inbound SA with this SPI is installed. `.spi`: the SPI; `.sa`: the inbound SA \
     that has it."
);
pyo3::create_exception!(
    ipsec,
    UnknownSaError,
    ControlError,
    "No SA of this name is installed. `.name`: the name."
);
pyo3::create_exception!(
    ipsec,
    SaInUseError,
    ControlError,
    "Deleting (or retiring) the SA would leave a policy without the SA it names. \
     `.sa`: the SA; `.policy`: the first policy that needs it."
);
pyo3::create_exception!(
    ipsec,
    MissingSaError,
    ControlError,
    "The policy names an SA that is not installed, or one of the other direction. \
     `.policy`: the policy; `.sa`: the SA name."
);
pyo3::create_exception!(
    ipsec,
    DirectionMismatchError,
    ControlError,
    "A successor (rekey_sa) must have the direction of the SA it replaces. `.sa`: the \
     new SA; `.replaces`: the SA it was to replace."
);
pyo3::create_exception!(
    ipsec,
    DuplicatePolicyError,
    ControlError,
    "A policy of this name is installed (replace_policy changes it). `.name`: the name."
);
pyo3::create_exception!(
    ipsec,
    UnknownPolicyError,
    ControlError,
    "No policy of this name is installed. `.name`: the name."
);
pyo3::create_exception!(
    ipsec,
    StalePoliciesError,
    ControlError,
    "Gateway.commit_policies: the gateway's policies changed after the PolicyEdit was \
     taken (edit_policies); nothing was changed. Take a new edit and make the changes \
     again."
);

static CONFIG_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// The `ipsec.ConfigError` class (a subclass of both `IpsecError` and `ValueError`).
pub(crate) fn config_error_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    CONFIG_ERROR
        .get_or_try_init(py, || {
            let bases = PyTuple::new(
                py,
                [py.get_type::<IpsecError>(), py.get_type::<PyValueError>()],
            )?;
            let ns = PyDict::new(py);
            ns.set_item("__module__", "ipsec")?;
            ns.set_item("__qualname__", "ConfigError")?;
            ns.set_item(
                "__doc__",
                "A rejected configuration (keyword argument, TOML file or cases file). \
                 Also a ValueError. `.field` names the keyword or TOML key (a nested key \
                 with a dot: `hard_lifetime.bytes`); `.context` says where it is \
                 (`sa \"b1-out\"`, `policy \"p\"`), or is None.",
            )?;
            ns.set_item("field", py.None())?;
            ns.set_item("context", py.None())?;
            let cls = py
                .get_type::<PyType>()
                .call1(("ConfigError", bases, ns))?
                .cast_into::<PyType>()?;
            Ok::<_, PyErr>(cls.unbind())
        })
        .map(|t| t.bind(py))
}

/// Every failure the bindings report, converted to a Python exception in one place
/// ([`From<Failure> for PyErr`]).
#[derive(Debug)]
pub(crate) enum Failure {
    /// A packet error of the core (counted under its drop reason).
    Packet(Error),
    /// A configuration error of the core, or of the bindings' argument checks.
    Config(CoreConfigError),
    /// No SPI could be allocated.
    Spi(SpiError),
    /// A refused control call of a live gateway.
    Control(CoreControlError),
    /// A call on an `SaLane` that was installed in a gateway (`Gateway.add_sa_lane`).
    LaneInstalled,
}

impl From<CoreControlError> for Failure {
    fn from(e: CoreControlError) -> Self {
        match e {
            // The same exception as an invalid configuration anywhere else.
            CoreControlError::Config(c) => Failure::Config(c),
            e => Failure::Control(e),
        }
    }
}

impl From<SpiError> for Failure {
    fn from(e: SpiError) -> Self {
        Failure::Spi(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Packet(e)
    }
}

impl From<CoreConfigError> for Failure {
    fn from(e: CoreConfigError) -> Self {
        Failure::Config(e)
    }
}

impl From<ipsec_core::Malformed> for Failure {
    fn from(m: ipsec_core::Malformed) -> Self {
        Failure::Packet(Error::Malformed(m))
    }
}

/// The exception class of a packet error.
fn packet_error_type<'py>(py: Python<'py>, e: &Error) -> Bound<'py, PyType> {
    match e {
        Error::AuthenticationFailed => py.get_type::<AuthenticationError>(),
        Error::Replayed { .. } | Error::TooOld { .. } => py.get_type::<ReplayError>(),
        Error::Malformed(_) | Error::BadPadding | Error::BadNextHeader(_) => {
            py.get_type::<MalformedPacketError>()
        }
        Error::UnknownSpi { .. } => py.get_type::<UnknownSpiError>(),
        Error::PolicyMismatch | Error::UnprotectedTraffic => py.get_type::<PolicyMismatchError>(),
        Error::LifetimeExpired(_) => py.get_type::<LifetimeExpiredError>(),
        Error::SequenceOverflow => py.get_type::<SequenceOverflowError>(),
        Error::WrongDirection => py.get_type::<WrongDirectionError>(),
        Error::TooBig { .. } => py.get_type::<PacketTooBigError>(),
        Error::Fragment(_) => py.get_type::<FragmentError>(),
        // A dummy packet, a policy DISCARD, a buffer too small (a bug of these
        // bindings, which size every buffer): the base class, with the drop reason in
        // `.reason`.
        _ => py.get_type::<IpsecError>(),
    }
}

/// An exception class and the attributes its instance carries.
type ClassAndAttrs<'py> = (Bound<'py, PyType>, Vec<(&'static str, Bound<'py, PyAny>)>);

/// The exception class of a refused control call and the attributes its instance
/// carries (the fields of the core's variant).
fn control_error<'py>(py: Python<'py>, e: &CoreControlError) -> PyResult<ClassAndAttrs<'py>> {
    let s = |v: &String| v.into_pyobject(py).map(Bound::into_any);
    Ok(match e {
        CoreControlError::DuplicateName { name } => (
            py.get_type::<DuplicateNameError>(),
            vec![("name", s(name)?)],
        ),
        CoreControlError::DuplicateSpi { spi, sa } => (
            py.get_type::<DuplicateSpiError>(),
            vec![("spi", spi.into_pyobject(py)?.into_any()), ("sa", s(sa)?)],
        ),
        CoreControlError::UnknownSa { name } => {
            (py.get_type::<UnknownSaError>(), vec![("name", s(name)?)])
        }
        CoreControlError::SaInUse { sa, policy } => (
            py.get_type::<SaInUseError>(),
            vec![("sa", s(sa)?), ("policy", s(policy)?)],
        ),
        CoreControlError::MissingSa { policy, sa } => (
            py.get_type::<MissingSaError>(),
            vec![("policy", s(policy)?), ("sa", s(sa)?)],
        ),
        CoreControlError::DirectionMismatch { sa, replaces } => (
            py.get_type::<DirectionMismatchError>(),
            vec![("sa", s(sa)?), ("replaces", s(replaces)?)],
        ),
        CoreControlError::DuplicatePolicy { name } => (
            py.get_type::<DuplicatePolicyError>(),
            vec![("name", s(name)?)],
        ),
        CoreControlError::UnknownPolicy { name } => (
            py.get_type::<UnknownPolicyError>(),
            vec![("name", s(name)?)],
        ),
        CoreControlError::StalePolicies => (py.get_type::<StalePoliciesError>(), Vec::new()),
        // `Config` is converted to `ConfigError` before this (`From<CoreControlError>`);
        // a variant added to the core later is the base class, with its message.
        _ => (py.get_type::<ControlError>(), Vec::new()),
    })
}

impl Failure {
    /// The exception instance (normalized, so that attributes can be set on it).
    pub(crate) fn into_exception(self, py: Python<'_>) -> PyErr {
        match self {
            Failure::Packet(e) => {
                let err = PyErr::from_type(packet_error_type(py, &e), e.to_string());
                // Setting an attribute on a fresh exception instance only fails on
                // memory exhaustion; the exception is raised either way.
                let _ = err.value(py).setattr("reason", e.drop_reason().as_str());
                if let Error::TooBig { inner_mtu } = e {
                    let _ = err.value(py).setattr("mtu", inner_mtu);
                }
                err
            }
            // Exhaustion has its class; a failed OS random generator is the base class.
            Failure::Spi(e @ SpiError::Exhausted { .. }) => {
                PyErr::from_type(py.get_type::<SpiExhaustedError>(), e.to_string())
            }
            Failure::Spi(e) => PyErr::from_type(py.get_type::<IpsecError>(), e.to_string()),
            Failure::Config(e) => match config_error_type(py) {
                Ok(cls) => {
                    let err = PyErr::from_type(cls.clone(), e.to_string());
                    // The key alone, as documented; the SA or policy in `.context` (the
                    // message holds both).
                    let _ = err.value(py).setattr("field", e.key());
                    let _ = err.value(py).setattr("context", e.context());
                    err
                }
                Err(err) => err,
            },
            Failure::LaneInstalled => PyErr::from_type(
                py.get_type::<IpsecError>(),
                "this lane was installed in a gateway (Gateway.add_sa_lane): the gateway \
                 processes its packets now",
            ),
            Failure::Control(CoreControlError::Config(e)) => Failure::Config(e).into_exception(py),
            Failure::Control(e) => match control_error(py, &e) {
                Ok((cls, attrs)) => {
                    let err = PyErr::from_type(cls, e.to_string());
                    for (name, value) in attrs {
                        let _ = err.value(py).setattr(name, value);
                    }
                    err
                }
                Err(err) => err,
            },
        }
    }
}

impl From<Failure> for PyErr {
    fn from(f: Failure) -> PyErr {
        Python::attach(|py| f.into_exception(py))
    }
}

/// A `ConfigError` about `field`.
pub(crate) fn config(field: &str, message: impl Into<String>) -> PyErr {
    Failure::Config(CoreConfigError::new(field, message)).into()
}

/// Registers the exception classes in the module, with their class-level attribute
/// defaults (`reason`, `index`, `field`).
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let base = py.get_type::<IpsecError>();
    base.setattr("reason", py.None())?;
    base.setattr("index", py.None())?;
    m.add("IpsecError", base)?;
    m.add("AuthenticationError", py.get_type::<AuthenticationError>())?;
    m.add("ReplayError", py.get_type::<ReplayError>())?;
    m.add(
        "MalformedPacketError",
        py.get_type::<MalformedPacketError>(),
    )?;
    m.add("UnknownSpiError", py.get_type::<UnknownSpiError>())?;
    m.add("PolicyMismatchError", py.get_type::<PolicyMismatchError>())?;
    m.add(
        "LifetimeExpiredError",
        py.get_type::<LifetimeExpiredError>(),
    )?;
    m.add(
        "SequenceOverflowError",
        py.get_type::<SequenceOverflowError>(),
    )?;
    m.add("WrongDirectionError", py.get_type::<WrongDirectionError>())?;
    let too_big = py.get_type::<PacketTooBigError>();
    too_big.setattr("mtu", py.None())?;
    m.add("PacketTooBigError", too_big)?;
    m.add("FragmentError", py.get_type::<FragmentError>())?;
    m.add("SpiExhaustedError", py.get_type::<SpiExhaustedError>())?;
    m.add("ConfigError", config_error_type(py)?)?;
    m.add("ControlError", py.get_type::<ControlError>())?;
    m.add("DuplicateNameError", py.get_type::<DuplicateNameError>())?;
    m.add("DuplicateSpiError", py.get_type::<DuplicateSpiError>())?;
    m.add("UnknownSaError", py.get_type::<UnknownSaError>())?;
    m.add("SaInUseError", py.get_type::<SaInUseError>())?;
    m.add("MissingSaError", py.get_type::<MissingSaError>())?;
    m.add(
        "DirectionMismatchError",
        py.get_type::<DirectionMismatchError>(),
    )?;
    m.add(
        "DuplicatePolicyError",
        py.get_type::<DuplicatePolicyError>(),
    )?;
    m.add("UnknownPolicyError", py.get_type::<UnknownPolicyError>())?;
    m.add("StalePoliciesError", py.get_type::<StalePoliciesError>())?;
    Ok(())
}
