#![no_std]

// This file exists to enable the library target (a build-dependency of the agent).
