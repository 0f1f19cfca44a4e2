import CDefibShims
import Glibc

/// Reads another process's memory with process_vm_readv — works while the process is hung.
public enum ProcessMemory {
    public static func readUInt64(pid: Int32, address: UInt64) throws -> UInt64 {
        var value: UInt64 = 0
        let n = withUnsafeMutableBytes(of: &value) { defib_read_memory(pid, address, $0.baseAddress, 8) }
        if n != 8 { throw SystemError(String(format: "process_vm_readv(%d, 0x%llx)", pid, address)) }
        return value
    }

    /// The target of /proc/PID/exe.
    public static func executable(pid: Int32) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/\(pid)/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        buf[n] = 0
        return String(cString: buf)
    }
}
