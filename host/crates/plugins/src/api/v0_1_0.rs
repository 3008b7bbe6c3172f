//! Bindings for `malt:plugin@0.1.0`, compiled from the frozen release in plugins/api/v0.1.0
//! (the one file guests and host share), and conversions to the host's own types.

use wasmtime::component::{InstancePre, Linker};
use wasmtime::Store;

use crate::types as h;

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../../../plugins/api/v0.1.0",
});

use exports::malt::plugin::benchmark as b;
use malt::plugin::types as t;

shared_glue!();

impl Bindings {
    /// A 0.1.0 answer has no key and no source: it votes as it is, trimmed.
    pub fn extract<T>(
        &self,
        store: &mut Store<T>,
        reqs: &[h::ExtractRequest],
    ) -> wasmtime::Result<Vec<Option<h::Extracted>>> {
        let reqs = Self::extract_requests(reqs);
        Ok(self
            .api()
            .call_extract(store, &reqs)?
            .into_iter()
            .map(|a| a.map(h::Extracted::bare))
            .collect())
    }
}
