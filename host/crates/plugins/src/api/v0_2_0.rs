//! Bindings for `malt:plugin@0.2.0`, compiled from the frozen release in plugins/api/v0.2.0,
//! and conversions to the host's own types. 0.2.0 differs from 0.1.0 only in `extract`, which
//! returns each answer with its voting key and how it was found.

use wasmtime::component::{InstancePre, Linker};
use wasmtime::Store;

use crate::types as h;

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../../../plugins/api/v0.2.0",
});

use exports::malt::plugin::benchmark as b;
use malt::plugin::types as t;

shared_glue!();

impl Bindings {
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
            .map(|a| a.map(Into::into))
            .collect())
    }
}

impl From<t::Extracted> for h::Extracted {
    fn from(e: t::Extracted) -> Self {
        // The API asks for a non-empty key; a plugin that sends an empty one votes on its
        // answer, as a 0.1.0 plugin does.
        let key = Some(e.key).filter(|k| !k.trim().is_empty());
        h::Extracted {
            answer: e.answer,
            key,
            found_by: match e.found_by {
                t::AnswerSource::Marker => h::AnswerSource::Marker,
                t::AnswerSource::Fallback => h::AnswerSource::Fallback,
            },
        }
    }
}
