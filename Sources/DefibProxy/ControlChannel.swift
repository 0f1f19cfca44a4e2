import DefibSystem
import Glibc
import Logging
import NIOCore
import ParkingLock
import FlightRecorder

/// A frame of a line protocol: a line (without its newline), or a line that grew past the limit.
enum LineFrame {
    case line(ByteBuffer)
    case tooLong
}

/// Splits a byte stream into lines of at most `maxLength` bytes. A longer line yields `.tooLong`
/// once and then the decoder swallows everything (the handler closes the connection).
final class LineFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = LineFrame
    let maxLength: Int
    private var overflowed = false

    init(maxLength: Int) { self.maxLength = maxLength }

    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if overflowed { buffer.moveReaderIndex(to: buffer.writerIndex); return .needMoreData }
        guard let nl = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if buffer.readableBytes > maxLength {
                overflowed = true
                buffer.moveReaderIndex(to: buffer.writerIndex)
                context.fireChannelRead(wrapInboundOut(.tooLong))
            }
            return .needMoreData
        }
        let length = nl - buffer.readerIndex
        if length > maxLength {
            overflowed = true
            buffer.moveReaderIndex(to: buffer.writerIndex)
            context.fireChannelRead(wrapInboundOut(.tooLong))
            return .needMoreData
        }
        let line = buffer.readSlice(length: length)!
        buffer.moveReaderIndex(forwardBy: 1)
        context.fireChannelRead(wrapInboundOut(.line(line)))
        return .continue
    }

    func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // A final line without a newline is still a request (e.g. `printf ping | socat`).
        while try decode(context: context, buffer: &buffer) == .continue {}
        if !overflowed && buffer.readableBytes > 0, let rest = buffer.readSlice(length: buffer.readableBytes) {
            context.fireChannelRead(wrapInboundOut(.line(rest)))
        }
        return .needMoreData
    }
}

/// Serves the operator's line protocol: one reply line per request line.
final class ControlHandler: ChannelInboundHandler {
    typealias InboundIn = LineFrame
    typealias OutboundOut = ByteBuffer
    private let env: ProxyContext

    init(_ env: ProxyContext) { self.env = env }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .tooLong:
            write(context, "error line longer than \(ControlCommand.maxLineBytes) bytes; closing")
                .whenComplete { [context = NIOLoopBound(context, eventLoop: context.eventLoop)] _ in context.value.close(promise: nil) }
        case let .line(buffer):
            let line = String(buffer: buffer)
            let command: ControlCommand
            do { command = try ControlCommand.parse(line) } catch {
                _ = write(context, error.reply)
                return
            }
            execute(command, context: context)
        }
    }

    private func execute(_ command: ControlCommand, context: ChannelHandlerContext) {
        switch command {
        case let .ping(token):
            // The read lock first: a catalog deadlock must silence the heartbeat.
            _ = env.catalog.summary()
            _ = write(context, token.map { "pong \($0)" } ?? "pong")
        case .locks:
            _ = write(context, Self.locksJSON(pid: getpid(), flightRecorder: env.flightRecorderPath, snapshots: LockRegistry.shared.snapshots()))
        case .stats:
            _ = write(context, Self.statsJSON(env))
        case .help:
            _ = write(context, ControlCommand.helpText)
        case .fault, .slowHolderFor:
            let (reply, followUp): (String, FaultFollowUp)
            switch command {
            case let .slowHolderFor(ms): (reply, followUp) = env.faults.arm(.slowHolder, holdFor: .milliseconds(ms))
            case let .fault(kind): (reply, followUp) = env.faults.arm(kind)
            default: return
            }
            let written = write(context, reply)
            switch followUp {
            case .none: break
            case let .terminate(kind):
                // Only once the reply has left: the caller gets its "ok" before the process goes.
                written.whenComplete { _ in FaultInjector.terminate(kind) }
            case .spinEventLoops:
                let group = env.group
                written.whenComplete { _ in FaultInjector.spinForever(on: group) }
            }
        }
    }

    private func write(_ context: ChannelHandlerContext, _ line: String) -> EventLoopFuture<Void> {
        var buffer = context.channel.allocator.buffer(capacity: line.utf8.count + 1)
        buffer.writeString(line)
        buffer.writeInteger(UInt8(ascii: "\n"))
        return context.writeAndFlush(wrapOutboundOut(buffer))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    /// The `locks` reply: `{"pid":…,"flight_recorder":…,"locks":[…]}`.
    static func locksJSON(pid: Int32, flightRecorder: String?, snapshots: [LockSnapshot]) -> String {
        var top = JSONLine()
        top.add("pid", Int(pid))
        top.add("flight_recorder", flightRecorder)
        let locks = snapshots.map { s -> String in
            var o = JSONLine()
            o.add("name", s.name)
            o.add("address", "0x" + String(s.address, radix: 16))
            o.add("word", LockWord.hex(s.word))
            o.add("revert", s.revert.rawValue)
            o.add("holder", raw: holderJSON(s.holder))
            o.add("last_holder", raw: holderJSON(s.lastHolder))
            o.add("readers_waiting", s.readersWaiting)
            o.add("writers_waiting", s.writersWaiting)
            // The holder above may own WRITER yet still wait for readers (a leaked read, a self-deadlock).
            o.add("holder_waiting_for_readers", raw: s.holderWaitingForReaders ? "true" : "false")
            o.add("read_holders", raw: "[" + s.readHolders.map(readHolderJSON).joined(separator: ",") + "]")
            o.add("more_read_holders", s.moreReadHolders)
            return o.closed
        }
        top.add("locks", raw: "[" + locks.joined(separator: ",") + "]")
        return top.closed
    }

    static func readHolderJSON(_ h: LockReadHolder) -> String {
        var o = JSONLine()
        o.add("tid", Int(h.tid))
        o.add("depth", Int(h.depth))
        o.add("since_ms", h.sinceUnixMs)
        o.add("exited", raw: h.threadExited ? "true" : "false")
        return o.closed
    }

    static func holderJSON(_ h: LockHolder?) -> String {
        guard let h else { return "null" }
        var o = JSONLine()
        o.add("label", h.label)
        o.add("tid", Int(h.tid))
        o.add("since_ms", h.sinceUnixMs)
        return o.closed
    }

    /// The `stats` reply, read from atomics only.
    static func statsJSON(_ env: ProxyContext) -> String {
        let s = env.stats
        let published = env.catalog.published
        let fault = env.faults.armed
        var o = JSONLine()
        o.add("pid", Int(getpid()))
        o.add("uptime_ms", Int64((monotonicNanoseconds() - s.startedAtNs) / 1_000_000))
        o.add("requests_served", s.requestsServed.load(ordering: .relaxed))
        o.add("requests_failed", s.requestsFailed.load(ordering: .relaxed))
        o.add("catalog_version", published.version)
        o.add("apps", published.apps)
        o.add("machines_up", published.machinesUp)
        o.add("updates_applied", s.updatesApplied.load(ordering: .relaxed))
        o.add("updates_timed_out", s.updatesTimedOut.load(ordering: .relaxed))
        o.add("updates_rejected", s.updatesRejected.load(ordering: .relaxed))
        o.add("updates_dropped", s.updatesDropped.load(ordering: .relaxed))
        o.add("reloads", s.reloads.load(ordering: .relaxed))
        o.add("fault", fault?.kind.rawValue ?? "none")
        o.add("fault_armed_at_ms", fault?.armedAtUnixMs)
        o.add("catalog_word", LockWord.hex(env.catalog.lock.rawWord))
        return o.closed
    }
}

/// Receives update lines on `unix:PATH` connections and hands them to the updater. No replies:
/// writers are scripts (`echo 'down shop m1' | socat - UNIX-CONNECT:…`); problems go to the log.
final class UpdateSocketHandler: ChannelInboundHandler {
    typealias InboundIn = LineFrame
    private let updater: CatalogUpdater
    private let logger: Logger
    private var reader: UpdateLineReader

    init(updater: CatalogUpdater, logger: Logger, source: String) {
        self.updater = updater; self.logger = logger; reader = UpdateLineReader(source: source)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .tooLong:
            logger.warning("\(reader.source): update line longer than \(UpdateLineReader.maxLine) bytes; closing the connection")
            context.close(promise: nil)
        case let .line(buffer):
            for r in reader.feed(buffer.readableBytesView + [UInt8(ascii: "\n")]) {
                switch r {
                case let .success(u): updater.submit(u, source: "\(reader.source):\(reader.lineNumber)")
                case let .failure(e): logger.warning("bad update line: \(e)")
                }
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}
