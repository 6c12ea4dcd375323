"""``tags/``: tags and the machines that carry them (manual tags: ``definition`` is kept, not
evaluated)."""

from __future__ import annotations

import re
from typing import Any

from metalflow.lab.maas import model
from metalflow.lab.maas.api.base import Request, Resource, Response, bad_request, not_found
from metalflow.lab.maas.model import Tag


class Tags(Resource):
    def tags_read(self, req: Request) -> Any:
        return [model.tag_json(t) for t in sorted(self.state.tags.values(), key=lambda t: t.name)]

    def tags_create(self, req: Request) -> Any:
        d = req.body
        name = (d.get("name") or "").strip()
        if not name:
            raise bad_request({"name": ["This field is required."]})
        if not re.fullmatch(r"[\w-]+", name):
            raise bad_request({"name": ["Invalid character in tag name."]})
        if name in self.state.tags:
            raise bad_request({"name": ["Tag with this Name already exists."]})
        tag = Tag(
            name,
            comment=d.get("comment") or "",
            definition=d.get("definition") or "",
            kernel_opts=d.get("kernel_opts") or "",
        )
        self.state.tags[name] = tag
        return model.tag_json(tag)

    def _tag(self, name: str) -> Tag:
        tag = self.state.tags.get(name)
        if tag is None:
            raise not_found("Tag")
        return tag

    def tag_read(self, req: Request, name: str) -> Any:
        return model.tag_json(self._tag(name))

    def tag_update(self, req: Request, name: str) -> Any:
        tag = self._tag(name)
        for key in ("comment", "definition", "kernel_opts"):
            if req.body.get(key) is not None:
                setattr(tag, key, req.body.get(key) or "")
        return model.tag_json(tag)

    def tag_delete(self, req: Request, name: str) -> Any:
        tag = self._tag(name)
        del self.state.tags[tag.name]
        for m in self.state.machines.values():
            m.tags.discard(tag.name)
        return Response(204)

    def tag_update_nodes(self, req: Request, name: str) -> Any:
        tag = self._tag(name)
        add, remove = req.body.getlist("add"), req.body.getlist("remove")
        unknown = [sid for sid in add + remove if sid not in self.state.machines]
        if unknown:
            raise bad_request(f"Unknown node(s): {', '.join(unknown)}.")
        added = removed = 0
        for sid in add:
            m = self.state.machines[sid]
            if tag.name not in m.tags:
                m.tags.add(tag.name)
                added += 1
        for sid in remove:
            m = self.state.machines[sid]
            if tag.name in m.tags:
                m.tags.discard(tag.name)
                removed += 1
        return {"added": added, "removed": removed}

    def tag_machines(self, req: Request, name: str) -> Any:
        tag = self._tag(name)
        return [self._mj(m) for m in sorted(self.state.machines.values(), key=lambda m: m.id) if tag.name in m.tags]
