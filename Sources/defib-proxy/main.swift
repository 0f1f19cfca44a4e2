// The reference proxy's entry point: everything lives in DefibProxy and DefibProxyCommand.swift.
DefibProxyCommand.runAsMain()
