//! Stanford Alpaca `alpaca_data.json`: a JSON list of `{instruction, input, output}` (the Hugging
//! Face Parquet conversion, with an extra `text` column, reads the same way).
//!
//! The user turn is `instruction + " " + input` when `input` is not blank, as Koala builds it; the
//! two parts are also kept apart in `meta` (`instruction`, `input`) for the Alpaca prompt template.
//! A missing `input` is read as empty. Id: `alpaca/{file key}/{element}`.
use serde_json::{Value, json};

use super::record::*;
use crate::schema::Turn;

pub(crate) fn parse(ctx: &RecordCtx, v: &Value) -> FieldResult<Parsed> {
    let obj = as_object(v, "")?;
    let instruction = str_field(obj, "", "instruction")?;
    let input = match obj.get("input") {
        None | Some(Value::Null) => "",
        Some(_) => str_field(obj, "", "input")?,
    };
    let output = str_field(obj, "", "output")?;
    let user = if input.trim().is_empty() {
        instruction.to_string()
    } else {
        format!("{instruction} {input}")
    };
    let meta = json!({"instruction": instruction, "input": input});
    Ok(Parsed::Rows(vec![ctx.row(
        ctx.position_id(),
        "unsplit",
        vec![Turn::user(user), Turn::assistant(output)],
        meta,
    )]))
}
