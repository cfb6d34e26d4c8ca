//! Typed reads of the fields of a JSON model config (ADM's and NCSN++'s), each error naming
//! the field with its path prefix `ctx` (e.g. `config.model.`).

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

/// Refuses keys outside the allowed lists (a typo would otherwise silently become a default);
/// `net` names the network in the message.
pub(crate) fn check_keys(
    obj: &Map<String, Value>,
    allowed: &[&[&str]],
    net: &str,
    ctx: &str,
) -> Result<()> {
    match obj
        .keys()
        .find(|k| !allowed.iter().any(|list| list.contains(&k.as_str())))
    {
        Some(key) => bail!("{ctx}{key}: unknown {net} config field"),
        None => Ok(()),
    }
}

/// An integer, also written as a float with no fraction (Python configs sometimes write 4.0).
pub(crate) fn opt_int(obj: &Map<String, Value>, key: &str, ctx: &str) -> Result<Option<i64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(i) => Ok(Some(i)),
            None => match v.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => Ok(Some(f as i64)),
                _ => bail!("{ctx}{key}: expected an integer, got {v}"),
            },
        },
    }
}

pub(crate) fn opt_usize(obj: &Map<String, Value>, key: &str, ctx: &str) -> Result<Option<usize>> {
    match opt_int(obj, key, ctx)? {
        Some(i) if i < 0 => bail!("{ctx}{key}: must not be negative, got {i}"),
        other => Ok(other.map(|i| i as usize)),
    }
}

pub(crate) fn req_usize(obj: &Map<String, Value>, key: &str, ctx: &str) -> Result<usize> {
    opt_usize(obj, key, ctx)?.with_context(|| format!("{ctx}{key}: required field is missing"))
}

pub(crate) fn opt_bool(obj: &Map<String, Value>, key: &str, ctx: &str) -> Result<Option<bool>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => bail!("{ctx}{key}: expected true or false, got {v}"),
    }
}

pub(crate) fn opt_f64(obj: &Map<String, Value>, key: &str, ctx: &str) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .with_context(|| format!("{ctx}{key}: expected a number, got {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn fields_read_or_name_the_field() {
        let o = obj(json!({"a": 4.0, "b": -1, "c": "x", "d": true, "e": 0.5, "n": null}));
        assert_eq!(opt_usize(&o, "a", "m.").unwrap(), Some(4));
        assert_eq!(opt_usize(&o, "n", "m.").unwrap(), None);
        assert_eq!(opt_int(&o, "b", "m.").unwrap(), Some(-1));
        let e = |r: Result<Option<usize>>| format!("{:#}", r.unwrap_err());
        assert_eq!(
            e(opt_usize(&o, "b", "m.")),
            "m.b: must not be negative, got -1"
        );
        assert_eq!(
            e(opt_usize(&o, "c", "m.")),
            "m.c: expected an integer, got \"x\""
        );
        assert_eq!(
            format!("{:#}", req_usize(&o, "z", "m.").unwrap_err()),
            "m.z: required field is missing"
        );
        assert_eq!(opt_bool(&o, "d", "").unwrap(), Some(true));
        assert!(opt_bool(&o, "e", "").is_err());
        assert_eq!(opt_f64(&o, "e", "").unwrap(), Some(0.5));
        assert!(opt_f64(&o, "c", "").is_err());
        let keys = format!(
            "{:#}",
            check_keys(&o, &[&["a", "b"], &["c"]], "ADM", "m.").unwrap_err()
        );
        assert_eq!(keys, "m.d: unknown ADM config field");
    }
}
