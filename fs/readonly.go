package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// readOnlyNode answers every operation that would change a file's
// attributes with EROFS. Every node embeds it (ramFile has its own
// Setattr). Without these, go-fuse answers ENOTSUP or, for xattrs, ENOATTR.
type readOnlyNode struct{}

func (readOnlyNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (readOnlyNode) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.EROFS
}

func (readOnlyNode) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return syscall.EROFS
}

func (readOnlyNode) Allocate(ctx context.Context, fh gofs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	return syscall.EROFS
}

// readOnlyDir answers every operation that would change a directory with
// EROFS. Every directory embeds it. Without these, go-fuse lets unlink and
// rmdir succeed (removing nothing but its own entry: `rm -rf` exits 0) and
// answers the others with ENOTSUP.
type readOnlyDir struct{ readOnlyNode }

func (readOnlyDir) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }

func (readOnlyDir) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }

func (readOnlyDir) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EROFS
}

func (readOnlyDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (readOnlyDir) Mknod(ctx context.Context, name string, mode, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (readOnlyDir) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}

func (readOnlyDir) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (readOnlyDir) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

var (
	_ = (gofs.NodeUnlinker)((*rootNode)(nil))
	_ = (gofs.NodeRmdirer)((*rootNode)(nil))
	_ = (gofs.NodeRenamer)((*rootNode)(nil))
	_ = (gofs.NodeMkdirer)((*rootNode)(nil))
	_ = (gofs.NodeMknoder)((*rootNode)(nil))
	_ = (gofs.NodeCreater)((*rootNode)(nil))
	_ = (gofs.NodeSymlinker)((*rootNode)(nil))
	_ = (gofs.NodeLinker)((*rootNode)(nil))
	_ = (gofs.NodeSetattrer)((*rootNode)(nil))
	_ = (gofs.NodeSetxattrer)((*rootNode)(nil))
	_ = (gofs.NodeRemovexattrer)((*rootNode)(nil))

	_ = (gofs.NodeUnlinker)((*runDir)(nil))
	_ = (gofs.NodeRmdirer)((*runDir)(nil))
	_ = (gofs.NodeRenamer)((*runDir)(nil))
	_ = (gofs.NodeMkdirer)((*runDir)(nil))
	_ = (gofs.NodeCreater)((*runDir)(nil))
	_ = (gofs.NodeSetattrer)((*runDir)(nil))
	_ = (gofs.NodeSetxattrer)((*runDir)(nil))

	_ = (gofs.NodeUnlinker)((*fullDir)(nil))
	_ = (gofs.NodeRenamer)((*fullDir)(nil))
	_ = (gofs.NodeCreater)((*fullDir)(nil))
	_ = (gofs.NodeSetattrer)((*fullDir)(nil))

	_ = (gofs.NodeSetattrer)((*contentFile)(nil))
	_ = (gofs.NodeSetxattrer)((*contentFile)(nil))
	_ = (gofs.NodeAllocater)((*contentFile)(nil))
	_ = (gofs.NodeSetxattrer)((*ramFile)(nil))
	_ = (gofs.NodeRemovexattrer)((*ramFile)(nil))
	_ = (gofs.NodeAllocater)((*ramFile)(nil))
)
