//! The contract between a model and its clients: the names, datatypes and shapes of its inputs
//! and outputs. A new revision must keep the contract of the one it replaces, or every request
//! a client sends for the old one fails on the new.

use crate::TensorSpec;

/// What a `canary` breaks of `stable`'s contract, in plain words (empty: compatible). An input
/// must be the same on both (clients send exactly what stable takes); an output stable has
/// must still be there, alike; a new output is compatible. A dimension stable leaves open (any
/// batch size) must stay open.
pub fn breaks(
    (stable_in, stable_out): (&[TensorSpec], &[TensorSpec]),
    (canary_in, canary_out): (&[TensorSpec], &[TensorSpec]),
) -> Vec<String> {
    let mut out = Vec::new();
    for s in stable_in {
        match canary_in.iter().find(|c| c.name == s.name) {
            None => out.push(format!("input {} is gone", s.name)),
            Some(c) => differs("input", s, c, &mut out),
        }
    }
    for c in canary_in
        .iter()
        .filter(|c| !stable_in.iter().any(|s| s.name == c.name))
    {
        out.push(format!(
            "input {} ({} {}) is new: clients do not send it",
            c.name,
            c.datatype.as_str(),
            shape(&c.shape)
        ));
    }
    for s in stable_out {
        match canary_out.iter().find(|c| c.name == s.name) {
            None => out.push(format!("output {} is gone", s.name)),
            Some(c) => differs("output", s, c, &mut out),
        }
    }
    out
}

fn differs(what: &str, stable: &TensorSpec, canary: &TensorSpec, out: &mut Vec<String>) {
    if stable.datatype != canary.datatype {
        out.push(format!(
            "{what} {} is {} where stable's is {}",
            stable.name,
            canary.datatype.as_str(),
            stable.datatype.as_str()
        ));
    }
    let fits = stable.shape.len() == canary.shape.len()
        && stable
            .shape
            .iter()
            .zip(&canary.shape)
            .all(|(s, c)| match (s, c) {
                // Open on stable: it must stay open.
                (None, c) => c.is_none(),
                // Fixed on stable: the same, or opened up.
                (Some(s), Some(c)) => s == c,
                (Some(_), None) => true,
            });
    if !fits {
        out.push(format!(
            "{what} {} has shape {} where stable's has {}",
            stable.name,
            shape(&canary.shape),
            shape(&stable.shape)
        ));
    }
}

/// `[N, 4]`: open dimensions as `N`.
fn shape(dims: &[Option<i64>]) -> String {
    let dims: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("N".to_owned(), |d| d.to_string()))
        .collect();
    format!("[{}]", dims.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DataType;

    fn spec(name: &str, datatype: DataType, shape: &[Option<i64>]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn what_breaks_clients_and_what_does_not() {
        let x = spec("X", DataType::F32, &[None, Some(4)]);
        let label = spec("label", DataType::I64, &[None]);
        let probs = spec("probabilities", DataType::F32, &[None, Some(3)]);
        let stable = (vec![x.clone()], vec![label.clone(), probs.clone()]);
        let same = |i: &[TensorSpec], o: &[TensorSpec]| breaks((&stable.0, &stable.1), (i, o));
        assert!(same(std::slice::from_ref(&x), &[label.clone(), probs.clone()]).is_empty());
        // A new output, and an output's fixed dimension opened up: compatible.
        let scores = spec("scores", DataType::F32, &[None, Some(3)]);
        let open = spec("probabilities", DataType::F32, &[None, None]);
        assert!(same(std::slice::from_ref(&x), &[label.clone(), open, scores]).is_empty());
        assert_eq!(
            same(
                &[spec("X", DataType::F32, &[None, Some(5)])],
                &[label.clone(), probs.clone()]
            ),
            ["input X has shape [N, 5] where stable's has [N, 4]"]
        );
        assert_eq!(
            same(
                &[spec("X", DataType::F32, &[Some(1), Some(4)])],
                &[label.clone(), probs.clone()]
            ),
            ["input X has shape [1, 4] where stable's has [N, 4]"]
        );
        assert_eq!(
            same(
                &[x.clone(), spec("mask", DataType::Bool, &[None])],
                &[label.clone(), probs.clone()]
            ),
            ["input mask (BOOL [N]) is new: clients do not send it"]
        );
        assert_eq!(
            same(
                std::slice::from_ref(&x),
                &[spec("label", DataType::F32, &[None]), probs]
            ),
            ["output label is FP32 where stable's is INT64"]
        );
        assert_eq!(same(&[x], &[label]), ["output probabilities is gone"]);
    }
}
