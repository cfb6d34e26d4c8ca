//! Model configuration files (formats.md §2): a JSON file, a built-in name, or the
//! `tweedie.config` metadata string of a weights file, dispatched on the architecture.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::adm::{AdmConfig, ADM_FFHQ256};
use super::ncsnpp::{NcsnppConfig, NCSNPP_FFHQ256};

/// A parsed model configuration, one variant per supported architecture.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// guided-diffusion's `UNetModel` (`arch: "adm"`).
    Adm(AdmConfig),
    /// score_sde's `NCSNpp` (`arch: "ncsnpp"`).
    Ncsnpp(NcsnppConfig),
}

/// Built-in configuration names accepted wherever a config file is.
pub const BUILTIN_NAMES: &[&str] = &[ADM_FFHQ256, NCSNPP_FFHQ256];

impl ModelConfig {
    /// `spec` is a built-in name (`adm-ffhq256`, `ncsnpp-ffhq256`) or the path of a JSON file.
    pub fn load(spec: &str) -> Result<ModelConfig> {
        if spec == ADM_FFHQ256 {
            return Ok(ModelConfig::Adm(AdmConfig::ffhq256()));
        }
        if spec == NCSNPP_FFHQ256 {
            return Ok(ModelConfig::Ncsnpp(NcsnppConfig::ffhq256()));
        }
        let path = Path::new(spec);
        let text = crate::input::read_text(path, "config file").with_context(|| {
            format!(
                "cannot read config file {spec} (built-in names: {})",
                BUILTIN_NAMES.join(", ")
            )
        })?;
        Self::from_json_str(&text).with_context(|| format!("config {spec}"))
    }

    /// Parses JSON text in any accepted form (flat with `arch`, or the nested golden forms).
    pub fn from_json_str(text: &str) -> Result<ModelConfig> {
        let value: Value = serde_json::from_str(text).context("not valid JSON")?;
        Self::from_json(&value)
    }

    /// Dispatches on the architecture: `create_model_kwargs` or `arch: "adm"` → ADM; a
    /// top-level `config` (score_sde's nested form) or `arch: "ncsnpp"` → NCSN++.
    pub fn from_json(value: &Value) -> Result<ModelConfig> {
        let obj = value
            .as_object()
            .context("the config must be a JSON object")?;
        let arch = obj.get("arch");
        if obj.contains_key("create_model_kwargs") {
            if let Some(a) = arch.filter(|a| a.as_str() != Some("adm")) {
                bail!("arch: {a} contradicts create_model_kwargs (an ADM config)");
            }
            return Ok(ModelConfig::Adm(AdmConfig::from_json(value)?));
        }
        if obj.contains_key("config") {
            if let Some(a) = arch.filter(|a| a.as_str() != Some("ncsnpp")) {
                bail!("arch: {a} contradicts the nested score_sde `config` (an NCSN++ config)");
            }
            return Ok(ModelConfig::Ncsnpp(NcsnppConfig::from_json(value)?));
        }
        match arch.map(|a| a.as_str()) {
            Some(Some("adm")) => Ok(ModelConfig::Adm(AdmConfig::from_json(value)?)),
            Some(Some("ncsnpp")) => Ok(ModelConfig::Ncsnpp(NcsnppConfig::from_json(value)?)),
            Some(_) => bail!(
                "arch: unknown architecture {} (expected \"adm\" or \"ncsnpp\")",
                arch.unwrap_or(&Value::Null)
            ),
            None => bail!("arch: missing (expected \"adm\" or \"ncsnpp\")"),
        }
    }

    /// The ADM configuration, or an error naming the architecture that is not ADM.
    pub fn adm(&self) -> Result<&AdmConfig> {
        match self {
            ModelConfig::Adm(c) => Ok(c),
            ModelConfig::Ncsnpp(_) => {
                bail!("this command runs ADM models only; the config is NCSN++")
            }
        }
    }

    /// The NCSN++ configuration, or an error naming the architecture that is not NCSN++.
    pub fn ncsnpp(&self) -> Result<&NcsnppConfig> {
        match self {
            ModelConfig::Ncsnpp(c) => Ok(c),
            ModelConfig::Adm(_) => bail!("expected an NCSN++ config; the config is ADM"),
        }
    }

    /// The flat JSON of formats.md §2 (what `tweedie.config` stores).
    pub fn to_json(&self) -> Value {
        match self {
            ModelConfig::Adm(c) => c.to_json(),
            ModelConfig::Ncsnpp(c) => c.to_json(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(value: Value) -> String {
        format!("{:#}", ModelConfig::from_json(&value).unwrap_err())
    }

    #[test]
    fn arch_dispatch_and_errors() {
        assert!(matches!(
            ModelConfig::load(ADM_FFHQ256).unwrap(),
            ModelConfig::Adm(c) if c == AdmConfig::ffhq256()
        ));
        assert!(err(json!({"arch": "dit"})).contains("arch: unknown architecture \"dit\""));
        assert!(matches!(
            ModelConfig::load(NCSNPP_FFHQ256).unwrap(),
            ModelConfig::Ncsnpp(c) if c == NcsnppConfig::ffhq256()
        ));
        let flat = ModelConfig::Ncsnpp(NcsnppConfig::ffhq256()).to_json();
        assert!(ModelConfig::from_json(&flat).unwrap().ncsnpp().is_ok());
        assert!(err(json!({"arch": "ncsnpp"})).contains("image_size: required"));
        assert!(err(json!({"arch": "adm", "config": {}})).contains("contradicts"));
        let golden = crate::testdata::golden("ncsnpp_small").join("config.json");
        let c = ModelConfig::load(golden.to_str().unwrap()).unwrap();
        assert_eq!(c.ncsnpp().unwrap().nf, 16);
        assert!(c.adm().is_err());
        assert!(err(json!({"image_size": 32})).contains("arch: missing"));
        assert!(err(json!({"arch": "ncsnpp", "create_model_kwargs": {}})).contains("contradicts"));
        let e = format!(
            "{:#}",
            ModelConfig::load("/nonexistent/c.json").unwrap_err()
        );
        assert!(
            e.contains("cannot read config file /nonexistent/c.json"),
            "{e}"
        );
        let e = format!("{:#}", ModelConfig::from_json_str("{oops").unwrap_err());
        assert!(e.contains("not valid JSON"), "{e}");
    }
}
