//! One plugin hook call through wasmtime, sync against async, on the same component
//! (a fluxgate:plugin@0.2 plugin) with host stubs that answer like the gateway's.

use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod sync_world {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "plugin",
        imports: { default: trappable },
    });
}

mod async_world {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "plugin",
        exports: { default: async },
        imports: { default: trappable },
    });
}

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The host side of the contract, answering like the gateway would, for both bindings.
macro_rules! stubs {
    ($world:ident) => {
        mod $world {
            use crate::State;
            use crate::$world::fluxgate::plugin::{host, types};
            use wasmtime::component::Resource;
            type R<T> = wasmtime::Result<T>;
            impl types::Host for State {}
            impl types::HostRequest for State {
                fn method(&mut self, _: Resource<types::Request>) -> R<String> { Ok("GET".into()) }
                fn path(&mut self, _: Resource<types::Request>) -> R<String> { Ok("/".into()) }
                fn query(&mut self, _: Resource<types::Request>) -> R<Option<String>> { Ok(None) }
                fn header(&mut self, _: Resource<types::Request>, _n: String) -> R<Option<Vec<u8>>> { Ok(Some(b"bench-key".to_vec())) }
                fn header_values(&mut self, _: Resource<types::Request>, _n: String) -> R<Vec<Vec<u8>>> { Ok(vec![b"v".to_vec()]) }
                fn headers(&mut self, _: Resource<types::Request>) -> R<Vec<(String, Vec<u8>)>> { Ok(vec![]) }
                fn client_ip(&mut self, _: Resource<types::Request>) -> R<String> { Ok("127.0.0.1".into()) }
                fn route(&mut self, _: Resource<types::Request>) -> R<String> { Ok("r".into()) }
                fn param(&mut self, _: Resource<types::Request>, _n: String) -> R<Option<String>> { Ok(None) }
                fn params(&mut self, _: Resource<types::Request>) -> R<Vec<(String, String)>> { Ok(vec![]) }
                fn body(&mut self, _: Resource<types::Request>) -> R<Option<Vec<u8>>> { Ok(None) }
                fn set_header(&mut self, _: Resource<types::Request>, _n: String, _v: Vec<u8>) -> R<()> { Ok(()) }
                fn append_header(&mut self, _: Resource<types::Request>, _n: String, _v: Vec<u8>) -> R<()> { Ok(()) }
                fn remove_header(&mut self, _: Resource<types::Request>, _n: String) -> R<()> { Ok(()) }
                fn set_path(&mut self, _: Resource<types::Request>, _p: String) -> R<()> { Ok(()) }
                fn set_query(&mut self, _: Resource<types::Request>, _q: Option<String>) -> R<()> { Ok(()) }
                fn set_body(&mut self, _: Resource<types::Request>, _b: Vec<u8>) -> R<()> { Ok(()) }
                fn stash(&mut self, _: Resource<types::Request>, _v: Vec<u8>) -> R<()> { Ok(()) }
                fn stashed(&mut self, _: Resource<types::Request>) -> R<Option<Vec<u8>>> { Ok(None) }
                fn drop(&mut self, _: Resource<types::Request>) -> R<()> { Ok(()) }
            }
            impl types::HostResponse for State {
                fn status(&mut self, _: Resource<types::Response>) -> R<u16> { Ok(200) }
                fn set_status(&mut self, _: Resource<types::Response>, _s: u16) -> R<()> { Ok(()) }
                fn header(&mut self, _: Resource<types::Response>, _n: String) -> R<Option<Vec<u8>>> { Ok(None) }
                fn header_values(&mut self, _: Resource<types::Response>, _n: String) -> R<Vec<Vec<u8>>> { Ok(vec![]) }
                fn headers(&mut self, _: Resource<types::Response>) -> R<Vec<(String, Vec<u8>)>> { Ok(vec![]) }
                fn body(&mut self, _: Resource<types::Response>) -> R<Option<Vec<u8>>> { Ok(None) }
                fn set_header(&mut self, _: Resource<types::Response>, _n: String, _v: Vec<u8>) -> R<()> { Ok(()) }
                fn append_header(&mut self, _: Resource<types::Response>, _n: String, _v: Vec<u8>) -> R<()> { Ok(()) }
                fn remove_header(&mut self, _: Resource<types::Response>, _n: String) -> R<()> { Ok(()) }
                fn set_body(&mut self, _: Resource<types::Response>, _b: Vec<u8>) -> R<()> { Ok(()) }
                fn drop(&mut self, _: Resource<types::Response>) -> R<()> { Ok(()) }
            }
            impl host::Host for State {
                fn log(&mut self, _l: types::LogLevel, _m: String) -> R<()> { Ok(()) }
                fn kv_get(&mut self, _k: String) -> R<Option<Vec<u8>>> { Ok(None) }
                fn kv_set(&mut self, _k: String, _v: Vec<u8>, _t: Option<u64>) -> R<Result<(), String>> { Ok(Ok(())) }
                fn kv_delete(&mut self, _k: String) -> R<bool> { Ok(false) }
                fn kv_incr(&mut self, _k: String, _d: i64, _t: Option<u64>) -> R<Result<i64, String>> { Ok(Ok(0)) }
                fn now_ms(&mut self) -> R<u64> { Ok(0) }
            }
        }
    };
}

mod impls {
    use super::*;
    stubs!(sync_world);
    stubs!(async_world);
}

fn state() -> State {
    State {
        wasi: WasiCtx::builder().build(),
        table: ResourceTable::new(),
    }
}

fn engine(async_support: bool) -> Engine {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .async_support(async_support);
    Engine::new(&config).unwrap_or_else(|e| panic!("engine: {e}"))
}

const CALLS: u32 = 200_000;
const ROUNDS: usize = 5;

fn report(name: &str, mut per_call: Vec<Duration>) {
    per_call.sort();
    let ns: Vec<String> = per_call.iter().map(|d| format!("{}", d.as_nanos())).collect();
    println!("{name:28} ns/call, {ROUNDS} rounds of {CALLS}: min {} median {} ({})", ns[0], ns[ns.len() / 2], ns.join(" "));
}

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        "plugins/target/wasm32-wasip2/release/header_rewrite.wasm".into()
    });
    let config = std::env::args()
        .nth(2)
        .unwrap_or_else(|| r#"{"request":{"set":{"x-bench":"1"}},"response":{"set":{"x-served-by":"fluxgate"}}}"#.into());
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));

    // Sync: the call runs to completion on this thread; past its deadline it traps.
    {
        let engine = engine(false);
        let component = Component::new(&engine, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap_or_else(|e| panic!("{e}"));
        sync_world::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut store = Store::new(&engine, state());
        store.set_epoch_deadline(1_000_000);
        let plugin = sync_world::Plugin::instantiate(&mut store, &component, &linker)
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = plugin.call_init(&mut store, &config).unwrap_or_else(|e| panic!("{e}"));
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            for _ in 0..CALLS {
                store.set_epoch_deadline(50);
                let _ = plugin
                    .call_on_request(&mut store, Resource::new_borrow(0))
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            rounds.push(started.elapsed() / CALLS);
        }
        report("sync on-request", rounds);
    }

    // Async: the call runs on a fiber; at each epoch tick it may yield to the runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let engine = engine(true);
        let component = Component::new(&engine, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap_or_else(|e| panic!("{e}"));
        async_world::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut store = Store::new(&engine, state());
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        store.set_epoch_deadline(1_000_000);
        let plugin = async_world::Plugin::instantiate_async(&mut store, &component, &linker)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = plugin.call_init(&mut store, &config).await.unwrap_or_else(|e| panic!("{e}"));
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            for _ in 0..CALLS {
                store.set_epoch_deadline(50);
                let _ = plugin
                    .call_on_request(&mut store, Resource::new_borrow(0))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            rounds.push(started.elapsed() / CALLS);
        }
        report("async on-request", rounds);
    });
}
