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

/// An instantiated 0.1.x plugin.
pub struct Bindings(Plugin, wasmtime::component::Func);

impl Bindings {
    pub fn instantiate<T: 'static>(
        pre: &InstancePre<T>,
        store: &mut Store<T>,
        export: &str,
    ) -> wasmtime::Result<Self> {
        let instance = pre.instantiate(&mut *store)?;
        let plugin = Plugin::new(&mut *store, &instance)?;
        // `grade` is the hot path: call it with the host's own types (derived component types,
        // type-checked here once) so requests are lowered without an intermediate copy.
        let iface = instance
            .get_export_index(&mut *store, None, export)
            .ok_or_else(|| wasmtime::format_err!("no export {export}"))?;
        let idx = instance
            .get_export_index(&mut *store, Some(&iface), "grade")
            .ok_or_else(|| wasmtime::format_err!("no export `grade`"))?;
        let grade = instance
            .get_func(&mut *store, idx)
            .ok_or_else(|| wasmtime::format_err!("export `grade` is not a function"))?;
        grade.typed::<(&[h::GradeRequest],), (Vec<h::Grade>,)>(&*store)?;
        Ok(Bindings(plugin, grade))
    }

    fn api(&self) -> &b::Guest {
        self.0.malt_plugin_benchmark()
    }

    pub fn info<T>(&self, store: &mut Store<T>) -> wasmtime::Result<h::PluginInfo> {
        let i = self.api().call_info(store)?;
        Ok(h::PluginInfo {
            name: i.name,
            version: i.version,
            description: i.description,
            roles: i.roles,
            options: i.options,
            can_generate: i.can_generate,
        })
    }

    pub fn configure<T>(
        &self,
        store: &mut Store<T>,
        options: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>> {
        self.api().call_configure(store, options)
    }

    pub fn parse_records<T>(
        &self,
        store: &mut Store<T>,
        lines: &[String],
    ) -> wasmtime::Result<Vec<Result<h::Example, String>>> {
        Ok(self
            .api()
            .call_parse_records(store, lines)?
            .into_iter()
            .map(|r| r.map(Into::into))
            .collect())
    }

    pub fn generate<T>(
        &self,
        store: &mut Store<T>,
        seed: u64,
        count: u32,
    ) -> wasmtime::Result<Result<Vec<h::Example>, String>> {
        Ok(self
            .api()
            .call_generate(store, seed, count)?
            .map(|v| v.into_iter().map(Into::into).collect()))
    }

    pub fn render<T>(
        &self,
        store: &mut Store<T>,
        reqs: &[h::RenderRequest],
    ) -> wasmtime::Result<Vec<Result<Vec<h::Message>, String>>> {
        let reqs: Vec<t::RenderRequest> = reqs
            .iter()
            .map(|r| t::RenderRequest {
                agent: r.agent.clone(),
                role: r.role.clone(),
                position: r.position,
                chain_length: r.chain_length,
                example: (&r.example).into(),
                history: r.history.iter().map(Into::into).collect(),
            })
            .collect();
        Ok(self
            .api()
            .call_render(store, &reqs)?
            .into_iter()
            .map(|r| r.map(|ms| ms.into_iter().map(Into::into).collect()))
            .collect())
    }

    pub fn extract<T>(
        &self,
        store: &mut Store<T>,
        reqs: &[h::ExtractRequest],
    ) -> wasmtime::Result<Vec<Option<String>>> {
        let reqs: Vec<t::ExtractRequest> = reqs
            .iter()
            .map(|r| t::ExtractRequest {
                output: r.output.clone(),
                choices: r.choices.iter().map(Into::into).collect(),
            })
            .collect();
        self.api().call_extract(store, &reqs)
    }

    pub fn grade<T>(
        &self,
        store: &mut Store<T>,
        reqs: &[h::GradeRequest],
    ) -> wasmtime::Result<Vec<h::Grade>> {
        // SAFETY: the signature was type-checked against these exact types in `instantiate`.
        let f = unsafe {
            wasmtime::component::TypedFunc::<(&[h::GradeRequest],), (Vec<h::Grade>,)>::new_unchecked(
                self.1,
            )
        };
        Ok(f.call(store, (reqs,))?.0)
    }
}

/// Nothing to add beyond WASI: the 0.1 world imports only types.
pub fn add_to_linker<T>(_linker: &mut Linker<T>) -> wasmtime::Result<()> {
    Ok(())
}

// The WIT bindings are generated per API version and must stay separate from the host's
// records: these are the only places their fields are copied.

impl From<&h::Choice> for t::Choice {
    fn from(c: &h::Choice) -> Self {
        t::Choice {
            label: c.label.clone(),
            text: c.text.clone(),
        }
    }
}

impl From<t::Choice> for h::Choice {
    fn from(c: t::Choice) -> Self {
        h::Choice {
            label: c.label,
            text: c.text,
        }
    }
}

impl From<&h::Example> for t::Example {
    fn from(e: &h::Example) -> Self {
        t::Example {
            id: e.id.clone(),
            question: e.question.clone(),
            gold: e.gold.clone(),
            choices: e.choices.iter().map(Into::into).collect(),
            metadata: e.metadata.clone(),
        }
    }
}

impl From<t::Example> for h::Example {
    fn from(e: t::Example) -> Self {
        h::Example {
            id: e.id,
            question: e.question,
            gold: e.gold,
            choices: e.choices.into_iter().map(Into::into).collect(),
            metadata: e.metadata,
        }
        .normalised()
    }
}

impl From<&h::Turn> for t::Turn {
    fn from(x: &h::Turn) -> Self {
        t::Turn {
            agent: x.agent.clone(),
            role: x.role.clone(),
            output: x.output.clone(),
        }
    }
}

impl From<t::Message> for h::Message {
    fn from(m: t::Message) -> Self {
        h::Message {
            role: m.role,
            content: m.content,
        }
    }
}
