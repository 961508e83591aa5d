//! The object's storage: SQLite (`ctx.storage.sql`), its alarm, and a
//! second handle to its state.

use wasm_bindgen::{JsCast, JsValue};
use worker::{js_sys, worker_sys};

use super::bindings::RawSql;

/// The object's SQLite storage (`ctx.storage.sql`), read without the
/// `worker` crate's serde bridge: its per-row-type deserializers were most
/// of the 17 KB (gzip) history added to the wasm.
pub struct Sql(RawSql);

/// A value bound to a `?` of a statement.
#[derive(Clone)]
pub enum Bind<'a> {
    Text(&'a str),
    /// Text already in a JS string, bound without another copy.
    JsText(&'a JsValue),
    Number(f64),
}

impl Sql {
    pub fn of(state: &worker_sys::DurableObjectState) -> Option<Sql> {
        let storage = state.storage().ok()?;
        let sql: JsValue = storage.sql().into();
        Some(Sql(sql.unchecked_into()))
    }

    /// Runs one statement; its rows, each an object of its columns.
    pub fn exec(&self, query: &str, binds: &[Bind]) -> Result<Vec<SqlRow>, String> {
        let args = js_sys::Array::new();
        for bind in binds {
            args.push(&match bind {
                Bind::Text(text) => JsValue::from_str(text),
                Bind::JsText(text) => (*text).clone(),
                Bind::Number(number) => JsValue::from_f64(*number),
            });
        }
        let cursor = self
            .0
            .exec(query, &args)
            .map_err(|err| format!("{err:?}"))?;
        Ok(cursor.to_array().iter().map(SqlRow).collect())
    }
}

/// One row of a query.
pub struct SqlRow(JsValue);

impl SqlRow {
    pub fn text(&self, column: &str) -> Option<String> {
        self.column(column).as_string()
    }

    pub fn number(&self, column: &str) -> Option<f64> {
        self.column(column).as_f64()
    }

    fn column(&self, column: &str) -> JsValue {
        js_sys::Reflect::get(&self.0, &JsValue::from_str(column)).unwrap_or(JsValue::UNDEFINED)
    }
}

/// Sets the object's alarm for `at_ms` (replacing any). The runtime keeps
/// the write ordered with the object's output, so it is not awaited.
pub fn set_alarm(storage: &worker_sys::DurableObjectStorage, at_ms: f64) -> Result<(), JsValue> {
    let at = js_sys::Date::new(&JsValue::from_f64(at_ms));
    storage.set_alarm(at, js_sys::Object::new()).map(drop)
}

/// A second handle to the object's state.
pub fn another_handle(state: &worker_sys::DurableObjectState) -> worker_sys::DurableObjectState {
    let handle: &JsValue = state.as_ref();
    handle.clone().unchecked_into()
}
