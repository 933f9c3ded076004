//! Runs the `custom_driver` example's own code under `cargo test`: the very
//! source a reader copies is the source that is tested.

#[path = "../custom_driver.rs"]
mod custom_driver;

#[test]
fn custom_driver_example_replicates_its_commands() {
    assert_eq!(custom_driver::main(), std::process::ExitCode::SUCCESS);
}
