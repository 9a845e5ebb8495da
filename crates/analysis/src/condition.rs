//! Success and failure conditions, in the expression language Argo Rollouts evaluates them in
//! (Expr), with the helpers Argo registers, so that templates written for Argo evaluate
//! unchanged: `result[0] >= 0.95`, `len(result) == 0 || result[0] < 0.5`,
//! `isNaN(result) || result < 0.2`, `asFloat(result) > 1`, `default(result, 0) < 5`.

use std::sync::LazyLock;

use expr::{Environment, Value};

/// A compiled condition.
#[derive(Debug, Clone)]
pub struct Condition {
    source: String,
    program: expr::Program,
}

/// Why a condition does not compile or evaluate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{condition}`: {message}")]
pub struct ConditionError {
    pub condition: String,
    pub message: String,
}

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // Argo's helpers (rollouts' utils/evaluate): conversions from the strings a web provider
    // often returns, and checks for the values Prometheus returns for empty ratios.
    env.add_function("asInt", |c| match one(&c.ident, c.args)? {
        Value::Integer(i) => Ok(Value::Integer(i)),
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|e| expr::Error::ExprError(format!("asInt({s:?}): {e}"))),
        other => Err(expr::Error::ExprError(format!(
            "asInt() takes a string or an integer, not {other}"
        ))),
    });
    env.add_function("asFloat", |c| match one(&c.ident, c.args)? {
        Value::Integer(i) => Ok(Value::Float(i as f64)),
        Value::Float(f) => Ok(Value::Float(f)),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|e| expr::Error::ExprError(format!("asFloat({s:?}): {e}"))),
        other => Err(expr::Error::ExprError(format!(
            "asFloat() takes a string or a number, not {other}"
        ))),
    });
    env.add_function("isNaN", |c| match one(&c.ident, c.args)? {
        Value::Float(f) => Ok(Value::Bool(f.is_nan())),
        Value::Integer(_) => Ok(Value::Bool(false)),
        other => Err(expr::Error::ExprError(format!(
            "isNaN() takes a number, not {other}"
        ))),
    });
    env.add_function("isInf", |c| match one(&c.ident, c.args)? {
        Value::Float(f) => Ok(Value::Bool(f.is_infinite())),
        Value::Integer(_) => Ok(Value::Bool(false)),
        other => Err(expr::Error::ExprError(format!(
            "isInf() takes a number, not {other}"
        ))),
    });
    env.add_function("isNil", |c| {
        Ok(Value::Bool(matches!(one(&c.ident, c.args)?, Value::Nil)))
    });
    env.add_function("default", |c| {
        let mut args = c.args.into_iter();
        match (args.next(), args.next(), args.next()) {
            (Some(Value::Nil), Some(fallback), None) => Ok(fallback),
            (Some(value), Some(_), None) => Ok(value),
            _ => Err(expr::Error::ExprError(
                "default() takes two arguments: a value and its default".into(),
            )),
        }
    });
    env
});

fn one(name: &str, args: Vec<Value>) -> Result<Value, expr::Error> {
    let mut args = args.into_iter();
    match (args.next(), args.next()) {
        (Some(v), None) => Ok(v),
        _ => Err(expr::Error::ExprError(format!(
            "{name}() takes exactly one argument"
        ))),
    }
}

impl Condition {
    pub fn compile(source: &str) -> Result<Self, ConditionError> {
        let program = expr::compile(source).map_err(|e| ConditionError {
            condition: source.to_owned(),
            message: one_line(&e.to_string()),
        })?;
        Ok(Self {
            source: source.to_owned(),
            program,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the condition holds for `result`.
    pub fn holds(&self, result: &serde_json::Value) -> Result<bool, ConditionError> {
        let mut ctx = expr::Context::default();
        ctx.insert("result", to_expr(result));
        match ENV.run(&self.program, &ctx) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(self.error(format!("gives {other}, not true or false"))),
            Err(e) => Err(self.error(one_line(&e.to_string()))),
        }
    }

    fn error(&self, message: String) -> ConditionError {
        ConditionError {
            condition: self.source.clone(),
            message,
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// JSON as the expression language sees it: whole numbers are integers, others floats.
fn to_expr(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(items) => Value::Array(items.iter().map(to_expr).collect()),
        serde_json::Value::Object(map) => Value::Map(
            map.iter()
                .map(|(k, v)| (k.clone(), to_expr(v)))
                .collect::<indexmap::IndexMap<_, _>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn holds(cond: &str, result: serde_json::Value) -> Result<bool, ConditionError> {
        Condition::compile(cond).unwrap().holds(&result)
    }

    #[test]
    fn argo_templates_evaluate_unchanged() {
        // From Argo Rollouts' analysis documentation.
        assert_eq!(holds("result[0] >= 0.95", json!([0.97])), Ok(true));
        assert_eq!(holds("result[0] >= 0.95", json!([0.9])), Ok(false));
        assert_eq!(
            holds("len(result) == 0 || result[0] < 0.5", json!([])),
            Ok(true)
        );
        assert_eq!(
            holds("len(result) == 0 || result[0] < 0.5", json!([0.7])),
            Ok(false)
        );
        assert_eq!(
            holds(
                "len(result) > 0 && all(result, {# > 0.9})",
                json!([0.95, 0.99])
            ),
            Ok(true)
        );
        assert_eq!(holds("result == true", json!(true)), Ok(true));
        assert_eq!(
            holds(
                "result.ok && result.score > 3",
                json!({"ok": true, "score": 4})
            ),
            Ok(true)
        );
        // A whole number compares with a fraction.
        assert_eq!(holds("result >= 0.99", json!(1)), Ok(true));
    }

    #[test]
    fn argo_helpers() {
        assert_eq!(holds("asInt(result) == 3", json!("3")), Ok(true));
        assert_eq!(holds("asFloat(result) > 0.5", json!("0.75")), Ok(true));
        assert_eq!(holds("isNaN(result)", json!(1.5)), Ok(false));
        assert_eq!(holds("isInf(result)", json!(2)), Ok(false));
        assert_eq!(holds("isNil(result)", json!(null)), Ok(true));
        assert_eq!(holds("default(result, 4) == 4", json!(null)), Ok(true));
        assert_eq!(holds("default(result, 4) == 2", json!(2)), Ok(true));
        assert!(holds("asInt(result) == 3", json!("three")).is_err());
    }

    #[test]
    fn errors_say_what_went_wrong() {
        // Indexing an empty vector: Argo reports an error, not a failure.
        let e = holds("result[0] >= 0.95", json!([])).unwrap_err();
        assert_eq!(e.condition, "result[0] >= 0.95");
        let e = holds("result + 1", json!(1)).unwrap_err();
        assert!(e.message.contains("not true or false"), "{e}");
        assert!(Condition::compile("result >=").is_err());
    }
}
