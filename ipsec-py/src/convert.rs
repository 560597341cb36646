//! Argument conversion: Python values to the core's types, with errors that name the
//! argument. Wrong types raise `TypeError`; wrong values of constructor and file
//! arguments raise `ConfigError` (a `ValueError`), of other calls `ValueError`.

use crate::errors::config;
use core::time::Duration;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyString};
use std::net::IpAddr;
use std::path::PathBuf;

/// How a bad value is reported.
#[derive(Clone, Copy)]
pub(crate) enum Bad {
    /// `ConfigError` (constructor and file arguments).
    Config,
    /// `ValueError` (arguments of other calls).
    Value,
}

fn bad_value(kind: Bad, field: &str, message: String) -> PyErr {
    match kind {
        Bad::Config => config(field, message),
        Bad::Value => PyValueError::new_err(format!("{field}: {message}")),
    }
}

/// The Python type name of `obj`, for messages.
pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

/// The unsigned integer types arguments are converted to, with their range for messages.
pub(crate) trait UInt: TryFrom<u64> {
    /// `0..=MAX`.
    const RANGE: &'static str;
}

impl UInt for u8 {
    const RANGE: &'static str = "0..=255";
}
impl UInt for u16 {
    const RANGE: &'static str = "0..=65535";
}
impl UInt for u32 {
    const RANGE: &'static str = "0..=4294967295";
}
impl UInt for u64 {
    const RANGE: &'static str = "0..=18446744073709551615";
}

/// An integer argument that must fit `T` (`bool` is refused: `spi=True` is a mistake).
pub(crate) fn int<T: UInt>(obj: &Bound<'_, PyAny>, field: &str, kind: Bad) -> PyResult<T> {
    if !obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{field} must be an int, got {}",
            type_name(obj)
        )));
    }
    obj.extract::<u64>()
        .ok()
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| bad_value(kind, field, format!("{obj} is out of range ({})", T::RANGE)))
}

/// An optional integer argument.
pub(crate) fn opt_int<T: UInt>(
    obj: Option<&Bound<'_, PyAny>>,
    field: &str,
    kind: Bad,
) -> PyResult<Option<T>> {
    match obj {
        Some(o) if !o.is_none() => int(o, field, kind).map(Some),
        _ => Ok(None),
    }
}

/// A string argument.
pub(crate) fn string<'a>(
    obj: &'a Bound<'_, PyAny>,
    field: &str,
) -> PyResult<&'a Bound<'a, PyString>> {
    obj.cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("{field} must be a str, got {}", type_name(obj))))
}

/// An IP address given as text or as an `ipaddress.IPv4Address` / `IPv6Address`.
pub(crate) fn addr(obj: &Bound<'_, PyAny>, field: &str, kind: Bad) -> PyResult<IpAddr> {
    if let Ok(s) = obj.cast::<PyString>() {
        let text = s.to_cow()?;
        return text.trim().parse().map_err(|_| {
            bad_value(
                kind,
                field,
                format!("{text:?} is not an IPv4 or IPv6 address"),
            )
        });
    }
    obj.extract::<IpAddr>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{field} must be a str or an ipaddress.IPv4Address/IPv6Address, got {}",
            type_name(obj)
        ))
    })
}

/// A time in seconds (the caller's clock, any epoch) as a `Duration`.
pub(crate) fn seconds(value: f64, field: &str, kind: Bad) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        bad_value(
            kind,
            field,
            format!("{value} is not a time in seconds (finite, >= 0)"),
        )
    })
}

/// A protocol given by name (`"tcp"`, `"udp"`, `"icmp"`, ...) or number 0..=255.
pub(crate) fn protocol(obj: &Bound<'_, PyAny>) -> PyResult<u8> {
    if obj.is_instance_of::<PyInt>() {
        return int::<u8>(obj, "protocol", Bad::Value);
    }
    let text = string(obj, "protocol")
        .map_err(|_| {
            PyTypeError::new_err(format!(
                "protocol must be a str or an int, got {}",
                type_name(obj)
            ))
        })?
        .to_cow()?;
    match ipsec_core::spd::selector::parse_protocol(&text) {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(PyValueError::new_err(
            "protocol: \"any\" is a selector, not a packet's protocol",
        )),
        Err(e) => Err(PyValueError::new_err(format!("protocol: {e}"))),
    }
}

/// A `bool` argument (`None` or absent: `default`).
pub(crate) fn boolean(
    obj: Option<&Bound<'_, PyAny>>,
    field: &str,
    default: bool,
) -> PyResult<bool> {
    match obj {
        Some(o) if !o.is_none() => o.cast::<PyBool>().map(|b| b.is_true()).map_err(|_| {
            PyTypeError::new_err(format!("{field} must be a bool, got {}", type_name(o)))
        }),
        _ => Ok(default),
    }
}

/// An optional time in seconds (an int or a float); `None` or absent: `None`.
pub(crate) fn opt_seconds(
    obj: Option<&Bound<'_, PyAny>>,
    field: &str,
    kind: Bad,
) -> PyResult<Option<Duration>> {
    match obj {
        Some(o) if !o.is_none() => {
            if o.is_instance_of::<PyBool>()
                || !(o.is_instance_of::<PyFloat>() || o.is_instance_of::<PyInt>())
            {
                return Err(PyTypeError::new_err(format!(
                    "{field} must be a number of seconds (int or float), got {}",
                    type_name(o)
                )));
            }
            let value: f64 = o
                .extract()
                .map_err(|_| bad_value(kind, field, format!("{o} is not a time in seconds")))?;
            seconds(value, field, kind).map(Some)
        }
        _ => Ok(None),
    }
}

/// A text argument, copied.
pub(crate) fn text(obj: &Bound<'_, PyAny>, field: &str) -> PyResult<String> {
    Ok(string(obj, field)?.to_cow()?.into_owned())
}

/// A `str` argument that may hold secrets (policy or SA file text), copied into memory
/// that is wiped when dropped. (The Python `str` itself is the caller's.)
pub(crate) fn secret_text(
    obj: &Bound<'_, PyAny>,
    field: &str,
) -> PyResult<zeroize::Zeroizing<String>> {
    let s = string(obj, field)?;
    let cow = s.to_cow()?;
    let mut copy = zeroize::Zeroizing::new(String::with_capacity(cow.len()));
    copy.push_str(&cow);
    if let std::borrow::Cow::Owned(owned) = cow {
        // The UTF-8 copy made for abi3 builds: wiped before it is freed.
        drop(zeroize::Zeroizing::new(owned));
    }
    Ok(copy)
}

/// A file path: a `str` or an `os.PathLike`.
pub(crate) fn path(obj: &Bound<'_, PyAny>, field: &str) -> PyResult<PathBuf> {
    obj.extract::<PathBuf>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{field} must be a str or an os.PathLike, got {}",
            type_name(obj)
        ))
    })
}

/// A `bytes` argument, borrowed.
pub(crate) fn bytes<'a>(obj: &'a Bound<'_, PyAny>, field: &str) -> PyResult<&'a [u8]> {
    obj.cast::<PyBytes>()
        .map(|b| b.as_bytes())
        .map_err(|_| PyTypeError::new_err(format!("{field} must be bytes, got {}", type_name(obj))))
}

/// Tunnel endpoints from the keywords `tunnel_src` and `tunnel_dst` (`None` or absent:
/// not given): both or neither, or `ConfigError` naming the missing one.
pub(crate) fn endpoints(
    src: Option<&Bound<'_, PyAny>>,
    dst: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<(IpAddr, IpAddr)>> {
    match (src.filter(|o| !o.is_none()), dst.filter(|o| !o.is_none())) {
        (Some(s), Some(d)) => Ok(Some((
            addr(s, "tunnel_src", Bad::Config)?,
            addr(d, "tunnel_dst", Bad::Config)?,
        ))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(crate::errors::config(
            "tunnel_dst",
            "missing (tunnel_src is given)",
        )),
        (None, Some(_)) => Err(crate::errors::config(
            "tunnel_src",
            "missing (tunnel_dst is given)",
        )),
    }
}

/// UDP encapsulation ports from the keyword `udp_encap`: a `(src_port, dst_port)` tuple,
/// or `None` (absent) for plain ESP.
pub(crate) fn udp_ports(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<(u16, u16)>> {
    let Some(u) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let pair: (Bound<'_, PyAny>, Bound<'_, PyAny>) = u.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "udp_encap must be a (src_port, dst_port) tuple, got {}",
            type_name(u)
        ))
    })?;
    Ok(Some((
        int(&pair.0, "udp_encap", Bad::Config)?,
        int(&pair.1, "udp_encap", Bad::Config)?,
    )))
}
