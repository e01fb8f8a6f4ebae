//! Integration tests for telemetryd: one test binary, real Mosquitto / mosquitto_sub / the
//! built daemon, plus an in-test scripted broker. Every test has its own broker, port, temp
//! dir and client ids, so they run in parallel.

mod brokers;
mod check;
mod cli;
mod cluster;
mod delivery;
mod demo;
mod fake_broker;
mod fake_broker_v5;
mod faults;
mod homeassistant;
mod hostile_sensors;
mod kit;
mod lifecycle;
mod mqtt5;
mod readings;
mod service;
