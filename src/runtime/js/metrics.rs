//! The Analytics Engine dataset binding: `writeDataPoint`, not awaited
//! (the runtime sends the point after the invocation, at no cost to it).

use wasm_bindgen::{JsCast, JsValue};
use worker::{js_sys, Env};

use super::bindings::RawDataset;
use crate::domain::metrics::DataPoint;

/// An `[[analytics_engine_datasets]]` binding.
pub struct Dataset(RawDataset);

impl Dataset {
    /// The binding `name` of `env`; `None` when it is not configured.
    pub fn from_env(env: &Env, name: &str) -> Option<Dataset> {
        js_sys::Reflect::get(env.as_ref(), &JsValue::from_str(name))
            .ok()
            .filter(|binding| binding.is_object())
            .map(|binding| Dataset(binding.unchecked_into()))
    }

    /// Writes one point; a refusal (e.g. more than 25 points in one
    /// invocation) is the runtime's, and is given back.
    pub fn write(&self, point: &DataPoint) -> Result<(), JsValue> {
        let strings = |items: &[String]| {
            items
                .iter()
                .map(|item| JsValue::from_str(item))
                .collect::<js_sys::Array>()
        };
        let doubles: js_sys::Array = point
            .doubles
            .iter()
            .map(|n| JsValue::from_f64(*n))
            .collect();
        let object = js_sys::Object::new();
        js_sys::Reflect::set(&object, &"indexes".into(), &strings(&point.indexes))?;
        js_sys::Reflect::set(&object, &"blobs".into(), &strings(&point.blobs))?;
        js_sys::Reflect::set(&object, &"doubles".into(), &doubles)?;
        self.0.write_data_point(&object)
    }
}
