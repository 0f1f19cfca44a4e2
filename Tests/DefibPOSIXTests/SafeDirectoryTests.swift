import DefibPOSIX
import DefibTestKit
import Foundation
import Glibc
import Testing

/// State, run and core directories: created with *at calls from `/`, never a link, never another user's,
/// never group/other-writable — and never chmod'ed or chown'ed unless defib made them. The ownership cases
/// use a real second user (`nobody`).
@Suite struct SafeDirectoryTests {
    static func mode(_ path: String) -> mode_t {
        var st = stat()
        return lstat(path, &st) == 0 ? st.st_mode & 0o7777 : 0
    }

    static func refusal(_ path: String) -> UnsafeDirectoryError? {
        do { _ = try SafeDirectory.open(path, role: "state directory"); return nil } catch { return error }
    }

    @Test func missingDirectoriesAreCreatedPrivateFromTheRoot() throws {
        let scratch = ScratchDirectory("safedir-create")
        let path = scratch.path + "/a/b/state"
        let dir = try SafeDirectory.open(path, mode: 0o700, role: "state directory")
        #expect(dir.created)
        #expect(Self.mode(path) == 0o700, "created with exactly the mode asked for, whatever the umask")
        #expect(Self.mode(scratch.path + "/a") == 0o755 && Self.mode(scratch.path + "/a/b") == 0o755)
        let again = try SafeDirectory.open(path)
        #expect(!again.created)
        let cores = try dir.subdirectory("cores", role: "core directory")
        #expect(cores.created && Self.mode(path + "/cores") == 0o700)
        // The descriptor is of the directory checked: a file made through it lands there.
        let fd = openat(cores.fd, "probe", O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        #expect(fd >= 0); close(fd)
        #expect(access(path + "/cores/probe", F_OK) == 0)
    }

    @Test func anExistingDirectoryIsUsedAsItIsNeverChmodded() throws {
        let scratch = ScratchDirectory("safedir-existing")
        let path = scratch.path + "/state"
        try #require(mkdir(path, 0o755) == 0 && chmod(path, 0o755) == 0)
        let dir = try SafeDirectory.open(path, mode: 0o700)
        #expect(!dir.created)
        #expect(Self.mode(path) == 0o755, "a directory defib did not create keeps its mode")
        try makeDirectory(path, mode: 0o700)
        #expect(Self.mode(path) == 0o755, "makeDirectory does not chmod it either")
    }

    @Test func aDirectoryOthersMayWriteIsRefusedAndLeftAlone() throws {
        let scratch = ScratchDirectory("safedir-writable")
        for (name, mode, who) in [("g", mode_t(0o775), "its group"), ("world", mode_t(0o1777), "everyone")] {
            let path = scratch.path + "/" + name
            try #require(mkdir(path, 0o700) == 0 && chmod(path, mode) == 0)
            let error = try #require(Self.refusal(path))
            #expect(error.reason == .writableByOthers(mode: UInt32(S_IFDIR) | UInt32(mode)), "\(error)")
            #expect(error.description.hasPrefix("state directory \(path): is writable by \(who) (mode \(String(mode, radix: 8)))"), "\(error)")
            #expect(Self.mode(path) == mode, "refused, not chmod'ed")
            #expect(throws: UnsafeDirectoryError.self) { try makeDirectory(path, mode: 0o700) }
            #expect(Self.mode(path) == mode)
        }
    }

    @Test func aLinkIsNeverFollowedToTheDirectoryItself() throws {
        let scratch = ScratchDirectory("safedir-link")
        let target = scratch.path + "/elsewhere"
        try #require(mkdir(target, 0o755) == 0 && chmod(target, 0o755) == 0)
        try #require(symlink(target, scratch.path + "/state") == 0)
        let error = try #require(Self.refusal(scratch.path + "/state"))
        #expect(error.reason == .symlink(target: target), "\(error)")
        #expect(Self.mode(target) == 0o755, "the link's target is not touched")
        // A `cores` link inside a good state directory: the same.
        let state = try SafeDirectory.open(scratch.path + "/real-state")
        try #require(symlink(target, scratch.path + "/real-state/cores") == 0)
        #expect(throws: UnsafeDirectoryError.self) { _ = try state.subdirectory("cores", role: "core directory") }
        #expect((try? FileManager.default.contentsOfDirectory(atPath: target))?.isEmpty == true, "nothing written through it")
    }

    @Test func anotherUsersDirectoryIsRefusedNotChowned() throws {
        let scratch = ScratchDirectory("safedir-owner")
        let nobody = OtherUser.nobody
        let path = scratch.path + "/state"
        try #require(mkdir(path, 0o700) == 0 && chown(path, nobody.uid, nobody.gid) == 0)
        let error = try #require(Self.refusal(path))
        #expect(error.reason == .wrongOwner(uid: nobody.uid, expected: geteuid()), "\(error)")
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_uid == nobody.uid && st.st_mode & 0o7777 == 0o700, "left as it was")
        // A state directory pre-created by another user *above* ours: that user could swap what is inside.
        let theirs = scratch.path + "/theirs"
        try #require(mkdir(theirs, 0o755) == 0 && chown(theirs, nobody.uid, nobody.gid) == 0)
        let above = try #require(Self.refusal(theirs + "/state"))
        guard case let .unsafeAncestor(text) = above.reason else { Issue.record("\(above)"); return }
        #expect(text.contains("owned by uid \(nobody.uid)"), "\(text)")
        #expect(access(theirs + "/state", F_OK) != 0, "nothing created inside it")
    }

    @Test func aSharedParentIsFineOnlyWhenStickyAndTheEntryIsOurs() throws {
        let scratch = ScratchDirectory("safedir-shared")
        let nobody = OtherUser.nobody
        let open = scratch.path + "/open"
        try #require(mkdir(open, 0o700) == 0 && chmod(open, 0o777) == 0)
        let unsafe = try #require(Self.refusal(open + "/state"))
        #expect("\(unsafe)".contains("without the sticky bit"), "\(unsafe)")
        let sticky = scratch.path + "/sticky"
        try #require(mkdir(sticky, 0o700) == 0 && chmod(sticky, 0o1777) == 0)
        _ = try SafeDirectory.open(sticky + "/state")   // like /tmp/x
        let planted = sticky + "/planted"
        try #require(mkdir(planted, 0o700) == 0 && chown(planted, nobody.uid, nobody.gid) == 0)
        let error = try #require(Self.refusal(planted + "/state"))
        #expect("\(error)".contains("belongs to uid \(nobody.uid)"), "\(error)")
    }

    @Test func linksAboveAreFollowedOnlyWhenRootOrWeOwnThem() throws {
        let scratch = ScratchDirectory("safedir-ancestor-link")
        try #require(mkdir(scratch.path + "/real", 0o755) == 0)
        try #require(symlink("real", scratch.path + "/via") == 0)
        let dir = try SafeDirectory.open(scratch.path + "/via/state")
        #expect(dir.created && access(scratch.path + "/real/state", F_OK) == 0)
        let nobody = OtherUser.nobody
        try #require(symlink("real", scratch.path + "/theirs") == 0 && lchown(scratch.path + "/theirs", nobody.uid, nobody.gid) == 0)
        // Not ours and not root's: refused, although the directory it points at is fine.
        #expect(Self.refusal(scratch.path + "/theirs/state") != nil)
        // `..` after a link is resolved as realpath would.
        _ = try SafeDirectory.open(scratch.path + "/via/../real/state")
    }

    @Test func aFreshDirectoryReplacesWhatWasThereWithoutFollowingLinks() throws {
        let scratch = ScratchDirectory("safedir-fresh")
        let run = try SafeDirectory.open(scratch.path + "/run")
        let outside = scratch.path + "/outside"
        try #require(mkdir(outside, 0o755) == 0)
        try "keep".write(toFile: outside + "/precious", atomically: false, encoding: .utf8)
        // A previous start's instance directory, written by the service: files, a subdirectory, links out.
        try #require(mkdir(scratch.path + "/run/instance", 0o777) == 0 && mkdir(scratch.path + "/run/instance/sub", 0o777) == 0)
        try "x".write(toFile: scratch.path + "/run/instance/sub/file", atomically: false, encoding: .utf8)
        try #require(symlink(outside, scratch.path + "/run/instance/link-to-dir") == 0)
        try #require(symlink(outside + "/precious", scratch.path + "/run/instance/sub/link-to-file") == 0)
        let nobody = OtherUser.nobody
        let fresh = try run.freshSubdirectory("instance", mode: 0o770, group: nobody.gid)
        #expect(fresh.created)
        #expect(try FileManager.default.contentsOfDirectory(atPath: fresh.path).isEmpty)
        var st = stat()
        #expect(stat(fresh.path, &st) == 0 && st.st_uid == geteuid() && st.st_gid == nobody.gid && st.st_mode & 0o7777 == 0o770)
        #expect((try? String(contentsOfFile: outside + "/precious", encoding: .utf8)) == "keep", "links were removed, not followed")
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path + "/run") == ["instance"], "the old one is gone")
    }
}
