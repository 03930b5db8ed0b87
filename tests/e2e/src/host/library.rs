//! Loading the plugin: `dlopen(path, RTLD_LAZY)`, the symbols by name, register.

use std::ffi::{CStr, c_int};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use fluent_bit_sys::{
    FLBPluginExit_t, FLBPluginExitCtx_t, FLBPluginFlush_t, FLBPluginFlushCtx_t, FLBPluginInit_t,
    FLBPluginOutputPreExit_t, FLBPluginOutputPreRun_t, FLBPluginPreRegister_t, FLBPluginRegister_t,
    FLBPluginUnregister_t, flb_plugin_proxy_def,
};
use libloading::os::unix::{Library, RTLD_LAZY};

use super::instance::{InitError, Instance};
use super::log;

/// How the host loads the plugin.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Use `FLBPluginFlushCtx` when exported (Fluent Bit does). `false` pretends it is
    /// missing, so the host falls back to `FLBPluginFlush`.
    pub use_flush_ctx: bool,
    /// Use `FLBPluginExitCtx` when exported (Fluent Bit does). `false` falls back to
    /// `FLBPluginExit`.
    pub use_exit_ctx: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            use_flush_ctx: true,
            use_exit_ctx: true,
        }
    }
}

/// What the plugin wrote into the definition in `FLBPluginRegister`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub type_: i32,
    pub proxy: i32,
    pub flags: i32,
    pub name: String,
    pub description: String,
    pub event_type: i32,
    /// Fluent Bit's trailing pointer, which the plugin must leave zero.
    pub config_map_is_null: bool,
}

/// The exported functions, found by name. Valid while the library is loaded.
#[derive(Clone, Copy)]
pub(crate) struct Symbols {
    pub(crate) pre_register: FLBPluginPreRegister_t,
    pub(crate) register: FLBPluginRegister_t,
    pub(crate) init: FLBPluginInit_t,
    pub(crate) flush_ctx: FLBPluginFlushCtx_t,
    pub(crate) flush: FLBPluginFlush_t,
    pub(crate) pre_run: FLBPluginOutputPreRun_t,
    pub(crate) pre_exit: FLBPluginOutputPreExit_t,
    pub(crate) exit_ctx: FLBPluginExitCtx_t,
    pub(crate) exit: FLBPluginExit_t,
    pub(crate) unregister: FLBPluginUnregister_t,
}

/// The value of symbol `name`, or `None` when the library does not export it.
///
/// # Safety
/// `T` is the symbol's true type: one of the `FLBPlugin*_t` typedefs.
unsafe fn lookup<T: Copy>(library: &Library, name: &str) -> Option<T> {
    // SAFETY: per this function's contract; the value is copied while loaded.
    unsafe { library.get::<T>(name.as_bytes()) }
        .ok()
        .map(|symbol| *symbol)
}

impl Symbols {
    fn find(library: &Library, options: LoadOptions) -> anyhow::Result<Self> {
        // SAFETY: each type is the typedef of the symbol's name in the ABI header.
        let symbols = unsafe {
            Symbols {
                pre_register: lookup(library, "FLBPluginPreRegister").flatten(),
                register: lookup(library, "FLBPluginRegister").flatten(),
                init: lookup(library, "FLBPluginInit").flatten(),
                flush_ctx: lookup(library, "FLBPluginFlushCtx")
                    .flatten()
                    .filter(|_| options.use_flush_ctx),
                flush: lookup(library, "FLBPluginFlush").flatten(),
                pre_run: lookup(library, "FLBPluginOutputPreRun").flatten(),
                pre_exit: lookup(library, "FLBPluginOutputPreExit").flatten(),
                exit_ctx: lookup(library, "FLBPluginExitCtx")
                    .flatten()
                    .filter(|_| options.use_exit_ctx),
                exit: lookup(library, "FLBPluginExit").flatten(),
                unregister: lookup(library, "FLBPluginUnregister").flatten(),
            }
        };
        if symbols.register.is_none() || symbols.init.is_none() {
            bail!("the plugin does not export FLBPluginRegister and FLBPluginInit");
        }
        if symbols.flush_ctx.is_none() && symbols.flush.is_none() {
            bail!("the plugin exports neither FLBPluginFlushCtx nor FLBPluginFlush");
        }
        Ok(symbols)
    }
}

/// A loaded plugin, driven as Fluent Bit drives it. See the [module docs](super).
pub struct Host {
    path: PathBuf,
    symbols: Symbols,
    /// Fluent Bit's calloc'd definition, alive until unregister.
    def: *mut flb_plugin_proxy_def,
    library: Option<Library>,
}

// SAFETY: the definition is written only by `FLBPluginRegister` inside `load`, before
// the host can be shared, and read afterwards; the symbols are functions the plugin
// declares callable from any thread (Fluent Bit's worker threads call them).
unsafe impl Send for Host {}
// SAFETY: as for `Send`.
unsafe impl Sync for Host {}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Loads the plugin at `path` with [`LoadOptions::default`].
    pub fn load(path: &Path) -> anyhow::Result<Host> {
        Self::load_with(path, LoadOptions::default())
    }

    /// `dlopen(path, RTLD_LAZY)`, finds the symbols, runs `FLBPluginPreRegister(0)` and
    /// `FLBPluginRegister` with a zeroed definition.
    pub fn load_with(path: &Path, options: LoadOptions) -> anyhow::Result<Host> {
        log::install_sink();
        // SAFETY: loading runs the library's initialisers; the library is the plugin
        // under test.
        let library = unsafe { Library::open(Some(path), RTLD_LAZY) }
            .with_context(|| format!("cannot load {}", path.display()))?;
        let symbols = Symbols::find(&library, options)?;
        if let Some(pre_register) = symbols.pre_register {
            // SAFETY: the ABI's signature; 0 = not a hot reload.
            let rc = unsafe { pre_register(0) };
            if rc == -1 {
                bail!("FLBPluginPreRegister returned -1");
            }
        }
        let def = Box::into_raw(Box::new(flb_plugin_proxy_def::default()));
        let host = Host {
            path: path.to_path_buf(),
            symbols,
            def,
            library: Some(library),
        };
        let register = symbols.register.expect("checked in Symbols::find");
        // SAFETY: a zeroed definition, as Fluent Bit's calloc gives.
        let rc = unsafe { register(host.def) };
        if rc != 0 {
            bail!("FLBPluginRegister returned {rc}");
        }
        Ok(host)
    }

    /// The plugin's definition, as registered.
    pub fn definition(&self) -> Definition {
        // SAFETY: `def` is ours until drop and no longer written by the plugin.
        let def = unsafe { &*self.def };
        let string = |ptr: *mut std::ffi::c_char| {
            if ptr.is_null() {
                return None;
            }
            // SAFETY: the plugin stored a NUL-terminated string with static lifetime.
            Some(
                unsafe { CStr::from_ptr(ptr) }
                    .to_string_lossy()
                    .into_owned(),
            )
        };
        Definition {
            type_: def.type_,
            proxy: def.proxy,
            flags: def.flags,
            name: string(def.name).unwrap_or_default(),
            description: string(def.description).unwrap_or_default(),
            event_type: def.event_type,
            config_map_is_null: def.config_map.is_null(),
        }
    }

    /// The path the plugin was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates an `[OUTPUT]` instance with these properties and runs `FLBPluginInit`.
    /// Fails when it returns 0 or less, with the lines it logged on this thread.
    pub fn init<K: AsRef<str>, V: AsRef<str>>(
        &self,
        properties: &[(K, V)],
    ) -> Result<Instance<'_>, InitError> {
        let properties: Vec<(&str, &str)> = properties
            .iter()
            .map(|(key, value)| (key.as_ref(), value.as_ref()))
            .collect();
        Instance::init(self, &properties)
    }

    /// `FLBPluginOutputPreRun(enable_hot_reload)`, which Fluent Bit calls once per
    /// output instance after every instance's init and before the pipeline runs.
    /// Returns its answer (Fluent Bit ignores it), or `None` when it is not exported.
    pub fn pre_run(&self, enable_hot_reload: bool) -> Option<c_int> {
        let pre_run = self.symbols.pre_run?;
        // SAFETY: the ABI's signature; the library is loaded.
        Some(unsafe { pre_run(c_int::from(enable_hot_reload)) })
    }

    pub(crate) fn symbols(&self) -> &Symbols {
        &self.symbols
    }

    /// `FLBPluginUnregister`, then `dlclose`. Instances must have exited (the borrow
    /// checker sees to it).
    pub fn unload(mut self) -> anyhow::Result<()> {
        self.unregister();
        match self.library.take() {
            Some(library) => library.close().context("dlclose failed"),
            None => Ok(()),
        }
    }

    fn unregister(&mut self) {
        if self.library.is_none() {
            return;
        }
        if let Some(unregister) = self.symbols.unregister {
            // SAFETY: the definition register filled; the library is still loaded.
            unsafe { unregister(self.def) };
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.unregister();
        drop(self.library.take());
        // SAFETY: allocated with Box::into_raw in `load_with`; the plugin no longer
        // holds it after unregister.
        drop(unsafe { Box::from_raw(self.def) });
    }
}
