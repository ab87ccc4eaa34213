//! nftables transactions through libnftables (`libnftables.so.1`, Debian's libnftables1, a
//! dependency of the nft tool), loaded at run time, in rvs's own process.
//!
//! Why not the `nft` process every time: at 10,000 Services a one-endpoint change took 56 ms
//! in the `nft` process against 35 ms through one long-lived context (bench/nft.sh): no process
//! to start and load, no script through a pipe. What is left is mostly the kernel checking the
//! table's jump graph on commit.
//!
//! The context lives on a thread of its own, started by the thread that builds the engine:
//! a new thread starts in its creator's network namespace, so the netlink sockets libnftables
//! opens program the namespace rvs (or a test) runs in, whatever thread asks.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::mpsc;

use tokio::sync::oneshot;

/// The soname of Debian's libnftables1 (nftables 1.0.x).
const SONAME: &str = "libnftables.so.1";

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxBuffer = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxGetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// One libnftables context and the functions that drive it.
struct Context {
    ctx: *mut c_void,
    free: CtxFree,
    get_error: CtxGetBuffer,
    run: RunCmd,
    // Keeps the functions above loaded; dropped last.
    _library: libloading::Library,
}

impl Context {
    fn open() -> Result<Context, String> {
        // SAFETY: loading Debian's libnftables runs no initialisers with requirements of ours.
        let library = unsafe { libloading::Library::new(SONAME) }
            .map_err(|e| format!("cannot load {SONAME}: {e}"))?;
        // SAFETY: the types are those of nftables/libnftables.h (1.0).
        unsafe {
            let new: CtxNew = symbol(&library, b"nft_ctx_new\0")?;
            let free: CtxFree = symbol(&library, b"nft_ctx_free\0")?;
            let buffer_output: CtxBuffer = symbol(&library, b"nft_ctx_buffer_output\0")?;
            let buffer_error: CtxBuffer = symbol(&library, b"nft_ctx_buffer_error\0")?;
            let get_error: CtxGetBuffer = symbol(&library, b"nft_ctx_get_error_buffer\0")?;
            let run: RunCmd = symbol(&library, b"nft_run_cmd_from_buffer\0")?;
            // NFT_CTX_DEFAULT.
            let ctx = new(0);
            if ctx.is_null() {
                return Err("nft_ctx_new failed".into());
            }
            // Output and errors into buffers, never onto rvs's stdout and stderr.
            if buffer_output(ctx) != 0 || buffer_error(ctx) != 0 {
                free(ctx);
                return Err("cannot buffer libnftables' output".into());
            }
            Ok(Context {
                ctx,
                free,
                get_error,
                run,
                _library: library,
            })
        }
    }

    /// Runs `script` as one transaction; Err holds nft's messages.
    fn run(&mut self, script: &str) -> Result<(), String> {
        let script = CString::new(script).map_err(|_| "the script holds a NUL byte")?;
        // SAFETY: ctx is live (freed only in Drop) and used by this thread alone; the script
        // outlives the call.
        let status = unsafe { (self.run)(self.ctx, script.as_ptr()) };
        // SAFETY: as above; the buffer is libnftables' and valid until the next call on ctx.
        let errors = unsafe {
            let buffer = (self.get_error)(self.ctx);
            if buffer.is_null() {
                String::new()
            } else {
                CStr::from_ptr(buffer).to_string_lossy().into_owned()
            }
        };
        if status == 0 {
            Ok(())
        } else if errors.is_empty() {
            Err(format!("libnftables returned {status}"))
        } else {
            Err(errors)
        }
    }
}

/// A function of `library`, copied out.
///
/// # Safety
/// `T` must be the function's true type.
unsafe fn symbol<T: Copy>(library: &libloading::Library, name: &[u8]) -> Result<T, String> {
    // SAFETY: the caller vouches for T.
    unsafe { library.get::<T>(name) }
        .map(|function| *function)
        .map_err(|e| format!("{SONAME}: {e}"))
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: ctx came from nft_ctx_new and is freed once.
        unsafe { (self.free)(self.ctx) }
    }
}

struct Job {
    script: String,
    done: oneshot::Sender<Result<(), String>>,
}

/// A handle on the thread that owns the context.
#[derive(Clone)]
pub(crate) struct Library {
    jobs: mpsc::Sender<Job>,
}

impl Library {
    /// Starts the context's thread; Err (why) when libnftables cannot be loaded here.
    pub(crate) fn start() -> Result<Library, String> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (opened, outcome) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("rvs-libnftables".into())
            .spawn(move || {
                let mut context = match Context::open() {
                    Ok(context) => {
                        let _ = opened.send(Ok(()));
                        context
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                };
                // Ends when every handle is gone.
                for job in queue {
                    let _ = job.done.send(context.run(&job.script));
                }
            })
            .map_err(|e| format!("cannot start the libnftables thread: {e}"))?;
        match outcome.recv() {
            Ok(Ok(())) => Ok(Library { jobs }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the libnftables thread ended at start".into()),
        }
    }

    /// Runs `script` as one transaction on the context's thread.
    pub(crate) async fn run(&self, script: String) -> Result<(), String> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Job { script, done })
            .map_err(|_| "the libnftables thread is gone".to_string())?;
        result
            .await
            .map_err(|_| "the libnftables thread is gone".to_string())?
    }
}
