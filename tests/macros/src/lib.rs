//! `#[ferry_test]`: an async test that cannot hang.
//!
//! It runs the test body on a two-worker Tokio runtime under an overall
//! deadline (120 s, or `#[ferry_test(timeout_secs = N)]`). Past it the test
//! fails with a message naming it. A watchdog thread backs that up: should
//! the body block a thread so that the deadline cannot even fire, the
//! watchdog prints the test's name and ends the process 60 s later, so a
//! test run always ends with a message rather than hanging.

use proc_macro::TokenStream;
use quote::quote;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{parse_macro_input, ItemFn, Lit, MetaNameValue, Token};

/// Default overall deadline of a test, in seconds.
const DEFAULT_TIMEOUT_SECS: u64 = 120;

#[proc_macro_attribute]
pub fn ferry_test(args: TokenStream, item: TokenStream) -> TokenStream {
    let parser = Punctuated::<MetaNameValue, Token![,]>::parse_terminated;
    let args = match parser.parse(args) {
        Ok(args) => args,
        Err(e) => return e.to_compile_error().into(),
    };
    let mut timeout_secs = DEFAULT_TIMEOUT_SECS;
    for arg in args {
        let value = match &arg.value {
            syn::Expr::Lit(syn::ExprLit { lit: Lit::Int(n), .. })
                if arg.path.is_ident("timeout_secs") =>
            {
                n.base10_parse::<u64>()
            }
            _ => Err(syn::Error::new_spanned(&arg, "expected `timeout_secs = N`")),
        };
        match value {
            Ok(n) => timeout_secs = n,
            Err(e) => return e.to_compile_error().into(),
        }
    }

    let ItemFn { attrs, vis, sig, block } = parse_macro_input!(item as ItemFn);
    if sig.asyncness.is_none() {
        let err = syn::Error::new_spanned(sig.fn_token, "#[ferry_test] needs an async fn");
        return err.to_compile_error().into();
    }
    let name = &sig.ident;
    let output = &sig.output;
    quote! {
        #[::core::prelude::v1::test]
        #(#attrs)*
        #vis fn #name() #output {
            let deadline = ::std::time::Duration::from_secs(#timeout_secs);
            let test = concat!(module_path!(), "::", stringify!(#name));
            // Dropped when this function returns or unwinds: the watchdog
            // then stands down.
            let (_alive, watch) = ::std::sync::mpsc::channel::<()>();
            ::std::thread::spawn(move || {
                let grace = ::std::time::Duration::from_secs(60);
                if let Err(::std::sync::mpsc::RecvTimeoutError::Timeout) =
                    watch.recv_timeout(deadline + grace)
                {
                    eprintln!("test {test} is stuck past its {}s deadline; ending the test run", deadline.as_secs());
                    ::std::process::exit(101);
                }
            });
            let runtime = ::tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("test runtime");
            let outcome = ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| {
                runtime.block_on(async move {
                    match ::tokio::time::timeout(deadline, async move #block).await {
                        Ok(result) => result,
                        Err(_) => panic!("test {test} did not finish within {}s", deadline.as_secs()),
                    }
                })
            }));
            // Blocking tasks left behind (Kafka calls) must not hold the
            // test thread up.
            runtime.shutdown_timeout(::std::time::Duration::from_secs(5));
            match outcome {
                Ok(result) => result,
                Err(panic) => ::std::panic::resume_unwind(panic),
            }
        }
    }
    .into()
}
