//! Types shared by kernel and user side. (in progress)
#![no_std]
