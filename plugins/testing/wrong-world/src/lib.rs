//! Test plugin: a well-formed component that exports the wrong world, so that `weir validate`
//! and plugin upload can be shown to refuse it with a clear message.

#[cfg(target_arch = "wasm32")]
#[allow(missing_docs, unsafe_code)]
mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "other" });

    struct Other;
    impl Guest for Other {
        fn hello() -> String {
            "hello from the wrong world".into()
        }
    }
    export!(Other);
}
